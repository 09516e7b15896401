"""Models as call sites joined producer -> users: one interface over two kinds of model.

Surgery (:mod:`.insert`, :mod:`.fold`) is written once against :class:`ModelView`:

* :class:`SequentialView` edits an ``nn.Sequential`` tree (nested plain ``nn.Sequential``
  containers) in place: the model keeps its type and its module names, and new modules go
  into the container of the module they follow.  Used when every layer the surgery cares
  about is reachable through such containers.
* :class:`FxView` edits the torch.fx graph of any other model torch.fx can trace; the
  result is a ``torch.fx.GraphModule`` with the model's class name whose submodules keep
  their qualified names (so ``state_dict`` keys are unchanged).  Functional calls
  (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``) are sites too.

Views are always opened on the caller's *copy*: surgery never edits the caller's model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from ..layers import BatchNormalization, Dropout, Flatten, TorchBatchNorm

__all__ = [
    "ACTIVATION_FUNCTIONS", "BATCH_NORM_TYPES", "FxView", "ModelView", "SequentialView", "Site",
    "is_activation", "open_view",
]

#: Activation module types and the functional forms torch.fx records for them (functions,
#: or method names for ``x.relu()``-style calls).
ACTIVATION_FUNCTIONS: dict[type[nn.Module], tuple[Any, ...]] = {
    nn.ReLU: (F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_"),
    nn.ReLU6: (F.relu6,),
    nn.LeakyReLU: (F.leaky_relu, F.leaky_relu_),
    nn.ELU: (F.elu, F.elu_),
    nn.SELU: (F.selu, torch.selu),
    nn.CELU: (F.celu,),
    nn.GELU: (F.gelu,),
    nn.SiLU: (F.silu,),
    nn.Mish: (F.mish,),
    nn.Hardswish: (F.hardswish,),
    nn.Hardsigmoid: (F.hardsigmoid,),
    nn.Hardtanh: (F.hardtanh, F.hardtanh_),
    nn.Tanh: (torch.tanh, F.tanh, "tanh", "tanh_"),
    nn.Sigmoid: (torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_"),
    nn.Softplus: (F.softplus,),
    nn.PReLU: (F.prelu,),
}

#: Batch-norm layers the surgery recognises (bnkit's and PyTorch's).
BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (
    BatchNormalization, TorchBatchNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
)
_BNKIT_LEAVES = (BatchNormalization, TorchBatchNorm, Dropout, Flatten)


@dataclass(eq=False)
class Site:
    """One call in a model: of a module (``module`` set) or, in fx graphs, of a function."""

    name: str  # qualified module name, or the fx node name for function calls
    module: nn.Module | None
    target: Any  # the module, the function, or the method name
    handle: Any = field(repr=False)  # (container, key) for Sequential trees, the fx.Node for graphs

    @property
    def kind(self) -> str:
        """The module's class name, or the function's name."""
        if self.module is not None:
            return type(self.module).__name__
        return str(getattr(self.target, "__name__", self.target))

    def label(self) -> str:
        return f"{self.name} ({self.kind})"


def is_activation(site: Site | None, types: tuple[type[nn.Module], ...]) -> bool:
    """Whether ``site`` is an activation of one of ``types``, as a module or a function."""
    if site is None:
        return False
    if site.module is not None:
        return isinstance(site.module, types)
    forms = [f for cls, fs in ACTIVATION_FUNCTIONS.items() if issubclass(cls, types) for f in fs]
    return any(site.target is f or (isinstance(f, str) and site.target == f) for f in forms)


class ModelView:
    """Sites in execution order, their producers and users, and the edits surgery needs."""

    root: nn.Module
    sites: list[Site]

    def users(self, site: Site) -> list[Site | None]:
        """What consumes ``site``'s output; ``None`` stands for the model output or a non-call."""
        raise NotImplementedError

    def producer(self, site: Site) -> Site | None:
        """The site whose output is ``site``'s first input (``None``: model input or a non-call)."""
        raise NotImplementedError

    def single_input(self, site: Site) -> bool:
        """Whether ``site`` is called with exactly one tensor and nothing else."""
        raise NotImplementedError

    def insert_after(self, anchor: Site, module: nn.Module, name: str) -> str:
        """Route ``anchor``'s output through ``module``; returns the module's qualified name."""
        raise NotImplementedError

    def remove(self, site: Site) -> None:
        """Drop a one-input module call; its users read its input instead."""
        raise NotImplementedError

    def finish(self) -> nn.Module:
        """The edited model."""
        return self.root

    def calls(self, module: nn.Module) -> int:
        """How many sites call ``module`` (a shared module is called more than once)."""
        return sum(site.module is module for site in self.sites)


def open_view(
    model: nn.Module, leaf_types: tuple[type[nn.Module], ...], reach_types: tuple[type[nn.Module], ...],
) -> ModelView:
    """A Sequential view if it reaches every ``reach_types`` module tracing would, else an fx view.

    ``leaf_types`` are modules torch.fx must not trace into (besides torch.nn's and bnkit's).
    """
    tracer = _Tracer(leaf_types)
    if _is_plain_sequential(model) and _sequential_reaches_all(model, tracer, reach_types):
        return SequentialView(model)
    return FxView(model, tracer)


class SequentialView(ModelView):
    """A tree of plain ``nn.Sequential`` containers read as one chain of leaf modules."""

    def __init__(self, root: nn.Sequential) -> None:
        self.root = root
        self.sites = list(_sequential_leaves(root, ""))

    def users(self, site: Site) -> list[Site | None]:
        i = self.sites.index(site)
        return [self.sites[i + 1] if i + 1 < len(self.sites) else None]

    def producer(self, site: Site) -> Site | None:
        i = self.sites.index(site)
        return self.sites[i - 1] if i > 0 else None

    def single_input(self, site: Site) -> bool:
        return True

    def insert_after(self, anchor: Site, module: nn.Module, name: str) -> str:
        container, key = anchor.handle
        local = _unique(name.rsplit(".", 1)[-1], lambda n: n in container._modules)
        items = list(container._modules.items())
        position = [k for k, _ in items].index(key) + 1
        items.insert(position, (local, module))
        container._modules.clear()
        container._modules.update(items)
        prefix = anchor.name[: len(anchor.name) - len(key)]
        site = Site(prefix + local, module, module, (container, local))
        self.sites.insert(self.sites.index(anchor) + 1, site)
        return site.name

    def remove(self, site: Site) -> None:
        container, key = site.handle
        del container._modules[key]
        self.sites.remove(site)


class FxView(ModelView):
    """The torch.fx graph of a traceable model, edited node by node."""

    def __init__(self, model: nn.Module, tracer: _Tracer) -> None:
        try:
            graph = tracer.trace(model)
        except Exception as error:  # noqa: BLE001 - fx raises many kinds; re-raised with context
            raise TypeError(
                f"Cannot edit a model of class {type(model).__name__}: torch.fx could not trace it "
                f"({type(error).__name__}: {error}). Expected an nn.Sequential or a model whose "
                "forward torch.fx can trace (no Python control flow on tensor values); "
                f"received: {type(model).__name__}"
            ) from error
        self.root = fx.GraphModule(model, graph, class_name=type(model).__name__)
        self.root.training = model.training
        self.graph = self.root.graph
        self._site: dict[fx.Node, Site] = {}
        self.sites = []
        for node in self.graph.nodes:
            site = self._make_site(node)
            if site is not None:
                self._site[node] = site
                self.sites.append(site)

    def _make_site(self, node: fx.Node) -> Site | None:
        if node.op == "call_module":
            module = self.root.get_submodule(str(node.target))
            return Site(str(node.target), module, module, node)
        if node.op in ("call_function", "call_method"):
            return Site(node.name, None, node.target, node)
        return None

    def users(self, site: Site) -> list[Site | None]:
        return [self._site.get(user) for user in site.handle.users]

    def producer(self, site: Site) -> Site | None:
        args = site.handle.args
        return self._site.get(args[0]) if args and isinstance(args[0], fx.Node) else None

    def single_input(self, site: Site) -> bool:
        node = site.handle
        return len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node)

    def insert_after(self, anchor: Site, module: nn.Module, name: str) -> str:
        target = _unique(name, self._taken)
        if not self.root.add_submodule(target, module):
            raise ValueError(f"Cannot add a module named {target!r}: a part of that path is not a module")
        node = anchor.handle
        with self.graph.inserting_after(node):
            new = self.graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        site = Site(target, module, module, new)
        self._site[new] = site
        self.sites.insert(self.sites.index(anchor) + 1, site)
        return target

    def remove(self, site: Site) -> None:
        node = site.handle
        node.replace_all_uses_with(node.args[0])
        self.graph.erase_node(node)
        del self._site[node]
        self.sites.remove(site)
        if not any(n.op == "call_module" and n.target == node.target for n in self.graph.nodes):
            self.root.delete_submodule(str(node.target))

    def finish(self) -> nn.Module:
        self.graph.lint()
        self.root.recompile()
        return self.root

    def _taken(self, name: str) -> bool:
        try:
            self.root.get_submodule(name)
        except AttributeError:
            return hasattr(self.root, name)
        return True


class _Tracer(fx.Tracer):
    """fx's tracer, also stopping at bnkit's layers and at the layers surgery looks for."""

    def __init__(self, leaf_types: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaf_types = tuple(leaf_types) + _BNKIT_LEAVES

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or self._keras_helper(m) or \
            super().is_leaf_module(m, module_qualified_name)

    def _keras_helper(self, module: nn.Module) -> bool:
        """A helper module of a loaded Keras model (``SamePad``, ``AvgPoolSame``, ``KerasReLU``...):
        opaque to surgery, and its shape arithmetic cannot be traced.  Helpers holding layers
        surgery looks for (``SeparableConv``'s two convs) are traced into, so those are visible."""
        return type(module).__module__.startswith("bnkit.keras.") and \
            not any(isinstance(m, self.leaf_types) for m in module.modules())


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _sequential_leaves(container: nn.Sequential, prefix: str) -> list[Site]:
    sites: list[Site] = []
    for key, child in container._modules.items():
        if child is None:
            continue
        if _is_plain_sequential(child):
            sites.extend(_sequential_leaves(child, f"{prefix}{key}."))
        else:
            sites.append(Site(prefix + key, child, child, (container, key)))
    return sites


def _sequential_reaches_all(model: nn.Sequential, tracer: _Tracer, types: tuple[type[nn.Module], ...]) -> bool:
    """No leaf hides a ``types`` module that tracing would reach (fx would see more)."""
    for site in _sequential_leaves(model, ""):
        module = site.module
        if module is None or tracer.is_leaf_module(module, site.name):
            continue
        if any(isinstance(m, types) for m in module.modules()):
            return False
    return True


def _unique(name: str, taken: Any) -> str:
    candidate, k = name, 0
    while taken(candidate):
        k += 1
        candidate = f"{name}_{k}"
    return candidate
