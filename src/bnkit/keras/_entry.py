"""The per-layer entry every part of :mod:`bnkit.keras` reads: one :class:`LayerEntry` per
Keras layer class, holding how to plan it (config -> torch modules), its weights
(:class:`WeightRule`, Keras layout <-> torch tensor) and, for plain torch models, which
torch modules stand for it and how to export them.

Family modules (``_core``, ``_bn``...) define entries and export ``ENTRIES``;
:mod:`bnkit.keras._table` collects them.  This module imports nothing else from
:mod:`bnkit.keras` at run time, so every module may import it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from .errors import UnsupportedLayerError

if TYPE_CHECKING:
    from ._build import Builder, Info
    from ._config import LayerSpec

__all__ = ["ExportState", "Exporter", "Handler", "LayerEntry", "View", "WeightRule", "as_is", "conv_kernel",
           "dense_kernel", "dense_shape", "present_rules", "resolve_tensor", "view_shape"]

#: ``view(tensor, channels)``: the torch tensor seen in Keras' layout (``channels``: the C of a
#: torch-order flatten feeding a Dense, else None).  Loading copies into it; saving reads it.
View = Callable[[Tensor, "int | None"], Tensor]
#: ``plan(builder, layer, inputs) -> (output Info, canonical config)``; see :mod:`bnkit.keras._build`.
#: A layer with several outputs (a recurrent layer with ``return_state``) returns a list of
#: Infos: config references ``[layer, node, k]`` name the k-th.
Handler = Callable[["Builder", "LayerSpec", "list[Info]"], "tuple[Info | list[Info], dict[str, Any]]"]


def as_is(tensor: Tensor, channels: int | None) -> Tensor:
    """The identity view (biases, BN vectors)."""
    return tensor


def conv_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    """A torch conv weight ``(O, I, *k)`` seen as Keras' ``(*k, I, O)`` (any rank)."""
    return tensor.permute(*range(2, tensor.dim()), 1, 0)


def dense_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    """A Linear weight ``(U, F)`` seen as Keras' ``(F, U)``; after a torch-order flatten of
    C channels, torch's features are (c, hw) and Keras' (hw, c): ``(U, C, HW) -> (HW, C, U)``."""
    if channels is None:
        return tensor.T
    units, features = tensor.shape
    return tensor.view(units, channels, features // channels).permute(2, 1, 0)


def dense_shape(tensor: Tensor) -> tuple[int, ...]:
    """Keras' Dense kernel shape ``(F, U)``."""
    return (tensor.shape[1], tensor.shape[0])


def view_shape(view: View) -> Callable[[Tensor], tuple[int, ...]]:
    """The Keras shape of a tensor as seen through ``view``."""
    return lambda tensor: tuple(view(tensor, None).shape)


@dataclass(frozen=True)
class WeightRule:
    """One Keras weight of a layer class and where it lives on the torch module.

    ``torch`` is an attribute name (``"weight"``) or a dotted path reaching a submodule's
    tensor (``"depthwise.weight"``).  ``keras_shape(tensor)`` gives the Keras shape for
    initialisation and checks; ``exact_shape=False`` compares only the non-1 sizes (BN's
    ``(1, ..., C)`` weights).
    """

    keras: str
    torch: str
    view: View
    keras_shape: Callable[[Tensor], tuple[int, ...]]
    exact_shape: bool = True


def resolve_tensor(module: nn.Module, path: str) -> Tensor | None:
    """The tensor at ``path`` (``"weight"``, ``"depthwise.weight"``) on ``module``, or None."""
    target: Any = module
    for part in path.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if isinstance(target, Tensor) else None


def present_rules(module: nn.Module, rules: Iterable[WeightRule]) -> list[WeightRule]:
    """The rules whose tensor exists on ``module`` (``use_bias=False``, ``scale=False``... drop out)."""
    return [rule for rule in rules if resolve_tensor(module, rule.torch) is not None]


@dataclass
class ExportState:
    """What the torch -> Keras walker (:mod:`bnkit.keras._export`) knows at one module.

    ``shape`` is the current torch shape without the batch (``(C, H, W)`` or ``(F,)``);
    ``torch_order`` is C when the tensor is a torch-order (c, h, w) flatten of C > 1
    channels (the next Dense needs the flatten permutation), else 0; ``following`` is the
    next leaf module (an exporter may absorb it, e.g. an activation into a Conv2D).
    ``layers``/``weighted``/``notes`` collect the output.
    """

    shape: tuple[int, ...]
    previous: str
    torch_order: int = 0
    following: nn.Module | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    weighted: dict[str, tuple[nn.Module, int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, keras_class: str, config: dict[str, Any], module: nn.Module | None = None,
            channels: int | None = None) -> None:
        """Append a Keras layer fed by the previous one (``module``: the one holding its weights)."""
        if any(layer["name"] == name for layer in self.layers):
            raise UnsupportedLayerError(f"Cannot write two Keras layers named {name!r}; rename one of the modules")
        full = config if keras_class == "InputLayer" else {"name": name, "trainable": True, "dtype": "float32",
                                                            **config}
        inbound = [[[self.previous, 0, 0, {}]]] if self.layers else []
        self.layers.append({"module": "keras.layers", "class_name": keras_class, "config": full,
                            "registered_name": None, "name": name, "inbound_nodes": inbound})
        if module is not None:
            self.weighted[name] = (module, channels)
        self.previous = name

    @staticmethod
    def refuse(path: str, module: nn.Module, why: str) -> UnsupportedLayerError:
        """The error for a module Keras cannot express; raise it."""
        return UnsupportedLayerError(f"Cannot write module {path!r} ({type(module).__name__}) to Keras: {why}")


#: ``export(state, path, name, module) -> leaves consumed`` (1, or 2 when it absorbed
#: ``state.following``); it appends Keras layer configs through :mod:`bnkit.keras._export`'s
#: helpers and updates ``state.shape``.  0 means "not expressible this way": the walker
#: tries the next entry, then refuses the module.
Exporter = Callable[[ExportState, str, str, nn.Module], int]


@dataclass(frozen=True)
class LayerEntry:
    """Everything bnkit knows about one Keras layer class, in one place.

    * ``keras_class``: the Keras class name written back (``"Conv2D"``).
    * ``plan``: reads the config, plans torch modules, returns the canonical config.
    * ``weights``: the Keras weights in Keras' order (trainable first), each with its torch
      tensor and layout change; shared by the reader, the writer and initialisation.
    * ``aliases``: other Keras names of the class (``MaxPool2D``, ``Convolution2D``).
    * ``torch_types``: torch module types that stand for this Keras class in *plain* torch
      models (``load_weights`` into torchvision-style models, ``save_model`` of an
      ``nn.Sequential``); more specific types first across entries.  Leave empty when
      the class has no plain-torch counterpart (e.g. DepthwiseConv2D is an ``nn.Conv2d``
      whose weights only a :class:`~bnkit.keras.KerasModel` can tell apart).
    * ``export``: describes a plain torch module as this Keras layer, see :data:`Exporter`.
    * ``example``: ``(keras_input_shape, layer_config)``, a small valid use of the layer
      (batch first, None for the batch); required for layers with weights: the test suite
      builds it, saves it to ``.keras`` and ``.h5`` and loads it back.
    """

    keras_class: str
    plan: Handler
    weights: tuple[WeightRule, ...] = ()
    aliases: tuple[str, ...] = ()
    torch_types: tuple[type[nn.Module], ...] = ()
    export: Exporter | None = None
    example: tuple[tuple[int | None, ...], dict[str, Any]] | None = None
