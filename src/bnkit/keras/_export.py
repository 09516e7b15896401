"""Describe a torch ``nn.Sequential`` as a channels-last Keras functional model.

Walks the leaf modules in order, tracking the tensor shape, and lets the first layer
entry whose ``torch_types`` match (see :mod:`bnkit.keras._table`) emit the Keras layer(s)
for each module: a Conv2d/Linear absorbs the elementwise activation right after it, as
Keras' ``activation=`` does; ``AdaptiveAvgPool2d(1)`` + flatten becomes one
``GlobalAveragePooling2D``.  Torch computes NCHW, Keras NHWC: conv kernels are permuted
by the weight rules, BN axes move from dim 1 to the last axis, and a Linear fed by a
torch-order flatten of C channels gets the flatten permutation.  Anything Keras cannot
express exactly is refused with :class:`UnsupportedLayerError` naming the module.
"""
from __future__ import annotations

from torch import nn

from ._entry import ExportState
from ._table import ENTRIES
from .._repr import short
from .errors import UnsupportedLayerError

__all__ = ["ExportState", "export_sequential"]


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        found: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            found.extend(_leaves(child, f"{prefix}.{name}" if prefix else name))
        return found
    return [(prefix, module)]


def export_sequential(model: nn.Module, input_shape: tuple[int, ...]) -> ExportState:
    """Describe ``model`` (an ``nn.Sequential``) for an NCHW (or (N, F)) input of ``input_shape``."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            "save_model writes nn.Sequential models (e.g. bnkit.models.vgg16()) and models from "
            f"bnkit.keras.load_model; received a {type(model).__name__}, whose forward cannot be read as data"
        )
    shape = tuple(input_shape)  # torch layout, no batch
    if len(shape) not in (1, 3) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"`input_shape` must be (channels, height, width) or (features,); received: {short(input_shape)}")
    state = ExportState(shape, "")
    keras_shape = [None, *shape[1:], shape[0]] if len(shape) == 3 else [None, *shape]
    state.add("input_layer", "InputLayer", {"batch_input_shape": keras_shape, "dtype": "float32", "sparse": False,
                                            "ragged": False, "name": "input_layer"})
    leaves = [(path, m) for path, m in _leaves(model) if not isinstance(m, nn.Identity)]
    index = 0
    while index < len(leaves):
        path, module = leaves[index]
        state.following = leaves[index + 1][1] if index + 1 < len(leaves) else None
        index += _export_one(state, path, module)
    return state


def _export_one(state: ExportState, path: str, module: nn.Module) -> int:
    name = path.replace(".", "_")
    for entry in ENTRIES:
        if entry.export is not None and entry.torch_types and isinstance(module, entry.torch_types):
            consumed = entry.export(state, path, name, module)
            if consumed:
                return consumed
    raise state.refuse(path, module, "no Keras layer computes the same thing")
