"""Plumbing shared by both BN layer families (no math: that is :mod:`bnkit.functional`)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as F
from .._spec import Clipping

# Every state tensor a BN layer may hold; the names are BatchNormStats' fields too.
STATE_NAMES = ("running_mean", "running_var", "running_stddev", "renorm_mean", "renorm_stddev")


def is_tracing(x: Any) -> bool:
    """True under ``torch.fx`` symbolic tracing or ``torch.jit.trace`` (skip Python-side checks)."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()


def fx_leaf(module: nn.Module, x: torch.fx.Proxy, *args: Any, **kwargs: Any) -> torch.fx.Proxy:
    """Record ``module`` as one ``call_module`` node, as ``torch.fx`` does for ``torch.nn`` layers.

    A BN layer's forward inspects its input (rank, sizes, lazy build) in Python, which a
    symbolic trace cannot follow; the traced graph calls the layer itself instead, so it
    computes and updates exactly what the layer does, and follows ``.train()``/``.eval()``.
    """
    tracer = x.tracer
    path = tracer.path_of_module(module) if hasattr(tracer, "path_of_module") else ""
    if not path:
        raise TypeError(
            f"torch.fx cannot trace a bare {type(module).__name__} (nor a bare torch.nn.BatchNorm*d); "
            "expected a model that holds it as a submodule; received the layer itself as the root"
        )
    return tracer.create_proxy("call_module", path, (x, *args), kwargs)


def store_stats(module: nn.Module, stats: F.BatchNormStats) -> None:
    """Copy the new statistics of a training call into the layer's buffers, by name."""
    buffers = module._buffers
    targets, values = [], []
    for name in STATE_NAMES:
        value = getattr(stats, name)
        target = buffers.get(name)
        if value is not None and target is not None and value is not target:
            targets.append(target)
            values.append(value)
    if targets:  # the new statistics are detached: the copy records nothing for autograd
        torch._foreach_copy_(targets, values)


def renorm_state(module: nn.Module, momentum: float) -> F.RenormState:
    return F.RenormState(module.running_stddev, module.renorm_mean, module.renorm_stddev, momentum,
                         module._clipping)


def flat_state(state_dict: dict[str, Any], prefix: str, keras_names: dict[str, str]) -> None:
    """Rename Keras-named entries (``gamma``, ``moving_mean``...) and flatten Keras shapes in place."""
    for keras_name, torch_name in keras_names.items():
        key = prefix + keras_name
        if key in state_dict and prefix + torch_name not in state_dict:
            state_dict[prefix + torch_name] = state_dict.pop(key)
        value = state_dict.get(prefix + torch_name)
        if isinstance(value, Tensor) and value.dim() > 1:
            state_dict[prefix + torch_name] = value.reshape(-1)


class BNExtras:
    """bnkit's additions shared by both families: renorm clipping, regularizers, constraints.

    The host class stores its validated :class:`~bnkit.BNSpec` in ``_spec`` and defines
    ``regularizers``/``constraints`` dicts keyed by ``"gamma"``/``"beta"``.
    """

    _spec: Any
    regularizers: dict[str, Any]
    constraints: dict[str, Any]

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` hook: TorchScript cannot compile bnkit's layers; say what can.

        (Returning an equivalent ``nn.BatchNorm*`` here would make ``torch.jit.script`` replace
        the layer inside the caller's own model.)
        """
        raise TypeError(
            f"torch.jit.script cannot compile bnkit's {type(self).__name__}; expected torch.export.export(model, "
            "(x,)) or torch.jit.trace(model.eval(), x), which support it, or, where every layer is plain, "
            "torch.jit.script(bnkit.to_torch_batchnorm(model)) (converts the model in place); "
            f"received: {type(self).__name__}({self.extra_repr()})"
        )

    @property
    def renorm_clipping(self) -> dict[str, float]:
        """The current clipping bounds, exactly as given; change them with :meth:`set_renorm_clipping`."""
        return self._spec.renorm_clipping.as_dict() if self._spec.renorm else {}

    def set_renorm_clipping(self, **bounds: float | None) -> None:
        """Change ``rmax``/``rmin``/``dmax`` during training (the paper's relaxation schedule).

        Keys not given keep their value; ``None`` removes a bound.  No recompilation is
        needed under ``torch.compile``: the bounds live in a tensor.
        """
        if not self._spec.renorm:
            raise ValueError(f"`renorm_clipping` applies only with `renorm=True`; this layer has renorm={self._spec.renorm}")
        clipping = Clipping.create({**self.renorm_clipping, **bounds})
        self._spec = self._spec.replace(renorm_clipping=clipping)
        with torch.no_grad():
            self._clipping.copy_(clipping.tensor())  # type: ignore[attr-defined]

    def _penalised(self) -> list[tuple[str, Tensor]]:
        shape = getattr(self, "keras_weight_shape", None)
        pairs = (("gamma", getattr(self, "weight")), ("beta", getattr(self, "bias")))
        return [(name, t.view(shape or t.shape)) for name, t in pairs if t is not None]

    def regularization_loss(self) -> Tensor:
        """Sum of the gamma/beta penalties (Keras ``layer.losses``); add it to the loss.

        As in tf.keras 2 a frozen layer still reports its penalties (Keras 3 reports none);
        they carry no gradient then.
        """
        total = self.running_mean.new_zeros(()) if getattr(self, "running_mean", None) is not None else torch.zeros(())  # type: ignore[attr-defined]
        for name, tensor in self._penalised():
            reg = self.regularizers[name]
            if reg is not None:
                total = total + reg(tensor)
        return total

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project gamma/beta with their constraints; call after ``optimizer.step()``."""
        for name, tensor in self._penalised():
            con = self.constraints[name]
            if con is not None:
                tensor.copy_(con(tensor))
