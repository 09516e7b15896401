"""Sequence masks while a graph is planned: which tensor carries which mask, as Keras
propagates them (see :mod:`bnkit.keras._rnn`).

A mask made by ``Embedding(mask_zero=True)`` or ``Masking`` goes with a layer's first
output: unchanged through the layers in :data:`MASK_PASSING` and through
``MultiHeadAttention`` (its output carries its query's mask), combined by the merge layers
of :data:`MERGES` (tf_keras: the logical AND of the inputs' masks, an input without one
ignored; Keras 3: the logical OR, and no mask as soon as one input has none; Keras 3's
``Multiply``, ``Maximum`` and ``Minimum`` also use the masks in their values, and are
refused), applied by
the recurrent layers (which pass it on when they return sequences; their states carry
none), by ``MultiHeadAttention`` and by ``GlobalAveragePooling1D`` (a masked mean), and
dropped by the layers of :data:`MASK_DROPPING` (``GlobalMaxPooling1D`` takes no mask in
either framework: it is the plain max).  A mask that would reach any other layer is
refused, naming that layer, since bnkit would silently compute it unmasked.

Masks belong to tensors, not layers: each call of a shared layer (one ``Embedding`` for two
token inputs, one ``LSTM`` over both) makes, passes or applies the mask of its own inputs.
"""
from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor, nn

from ._build import Builder
from ._config import LayerSpec, TensorId
from ._layers import KERAS3_POLICY, keras3_dialect
from ._mask_ops import MaskDescription
from .errors import UnsupportedLayerError

__all__ = ["MASK_DROPPING", "MASK_PASSING", "MERGES", "RECURRENT", "Mask", "MaskKey", "MaskMerge", "call_input",
           "check_mask_reach", "describe", "incoming_mask", "masks", "merge_dtype", "output", "pending_input",
           "tensor_mask"]

RECURRENT = ("SimpleRNN", "LSTM", "GRU")
#: Layers that hand a Keras mask on unchanged (tf_keras ``supports_masking``; Keras 3 alike).
MASK_PASSING = frozenset({"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "BatchNormalization",
                          "LayerNormalization", "Activation", "ReLU", "Dense"})
#: Merge layers whose output mask combines their inputs' masks (Keras' ``_Merge.compute_mask``).
MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
#: Keras 3 merges whose values depend on their inputs' masks (refused when one reaches them).
_KERAS3_VALUE_MERGES = frozenset({"Multiply", "Maximum", "Minimum"})
#: Layers that use the mask and whose output carries none (or their query's: attention).
_MASK_USING = frozenset({*RECURRENT, "Bidirectional", "MultiHeadAttention", "GlobalAveragePooling1D"})
#: Layers whose output carries no mask and whose values do not depend on it.
MASK_DROPPING = frozenset({"Flatten", "GlobalMaxPooling1D"})
#: A mask: its slot, and its :data:`~bnkit.keras._mask_ops.MaskDescription`: ``(layer, value,
#: reduced)`` when it is ``layer != value``, reduced with ``any`` over the last axis (a Masking
#: layer's) when ``reduced``; ``("and"|"or", (description, ...), False)`` for a merge of masks.
Mask = tuple[int, MaskDescription]
#: Where a mask is kept: ``(layer, call, 0)``, the tensor carrying it; ``(layer, call,
#: "input")``, the mask a recurrent call applies, until its output is planned; ``(layer, call,
#: "merged")``, a merge call's combined mask.
MaskKey = tuple[str, int, int | str]
_MASKS: weakref.WeakKeyDictionary[Builder, dict[MaskKey, Mask]] = weakref.WeakKeyDictionary()


class MaskMerge(nn.Module):
    """The mask of a Keras merge layer: the logical AND (tf_keras) or OR (Keras 3) of its
    inputs' boolean ``(N, T)`` masks."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("and", "or"):
            raise ValueError(f"`mode` must be 'and' or 'or'; received: mode={mode!r}")
        self.mode = mode

    def forward(self, inputs: list[Tensor]) -> Tensor:
        out = inputs[0]
        for mask in inputs[1:]:
            out = out & mask if self.mode == "and" else out | mask
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def describe(mask: Any) -> str:
    """A mask description as text: ``ids != 0``, ``any(x != 0, axis=-1)``, ``(a | b)``."""
    if isinstance(mask, tuple) and len(mask) == 3 and mask[0] in ("or", "and") and isinstance(mask[1], tuple):
        return "(" + (" | " if mask[0] == "or" else " & ").join(describe(m) for m in mask[1]) + ")"
    if isinstance(mask, tuple) and len(mask) == 3 and isinstance(mask[1], (int, float)):
        text = f"{mask[0]} != {mask[1]:g}"
        return f"any({text}, axis=-1)" if mask[2] else text
    return repr(mask)


def masks(b: Builder) -> dict[MaskKey, Mask]:
    """:data:`MaskKey` -> the boolean mask kept there (this build only)."""
    return _MASKS.setdefault(b, {})


def output(b: Builder, spec: LayerSpec) -> TensorId:
    """The first output of the call of ``spec`` being planned (the tensor a mask goes with)."""
    return (spec.name, b.call, 0)


def pending_input(b: Builder, spec: LayerSpec) -> MaskKey:
    """Where the mask the recurrent call being planned applies is kept until its output."""
    return (spec.name, b.call, "input")


def call_input(b: Builder, spec: LayerSpec) -> str:
    """The layer whose output is the first input of the call being planned (for a
    description: the ids of this call of an ``Embedding``)."""
    inputs = _tensors(spec, b.call)
    return inputs[0][0] if inputs else ""


def _consumers(b: Builder, tensor: TensorId) -> list[tuple[LayerSpec, int]]:
    """The calls ``(layer, call)`` fed by ``tensor``."""
    return [(layer, call) for layer in b.spec.layers for call in range(max(len(layer.calls), 1))
            if tensor in _tensors(layer, call)]


def _tensors(spec: LayerSpec, call: int) -> tuple[tuple[str, int, int], ...]:
    if spec.calls:
        return spec.calls[call] if call < len(spec.calls) else ()
    return tuple((name, 0, 0) for name in spec.inbound)


def _carries(b: Builder, tensor: tuple[str, int, int], depth: int = 0) -> bool:
    """Whether Keras attaches a mask to ``tensor``, read from the configs alone (for
    Keras 3 merges, whose output carries a mask only when every input does)."""
    if tensor[2] != 0 or depth > 200:
        return False
    layer = b.spec.layer(tensor[0])
    cfg = layer.config
    if layer.class_name == "Embedding":
        return cfg.get("mask_zero") is True
    if layer.class_name == "Masking":
        return True
    inputs = _tensors(layer, tensor[1])
    if layer.class_name in MERGES:
        found = [_carries(b, t, depth + 1) for t in inputs]
        return all(found) if keras3_dialect(cfg) else any(found)
    if layer.class_name in RECURRENT or layer.class_name == "Bidirectional":
        inner = cfg.get("layer", {}).get("config", {}) if layer.class_name == "Bidirectional" else cfg
        if not (isinstance(inner, dict) and inner.get("return_sequences") is True):
            return False
    elif layer.class_name not in MASK_PASSING and layer.class_name != "MultiHeadAttention":
        return False
    return bool(inputs) and _carries(b, inputs[0], depth + 1)


def merge_dtype(b: Builder, spec: LayerSpec) -> Any:
    """The ``dtype`` bnkit writes for a merge layer: Keras 3's policy (which marks the Keras 3
    dialect, so that its mask is read back as Keras 3 combines it) when it is a Keras 3
    layer and a mask reaches it, else ``"float32"``."""
    if keras3_dialect(spec.config) and any(_carries(b, t) for t in _tensors(spec, b.call)):
        return dict(KERAS3_POLICY)
    return "float32"


def check_mask_reach(b: Builder, source: TensorId) -> None:
    """Refuse when the mask carried by tensor ``source`` reaches a layer bnkit does not mask."""
    pending, seen = [source], {source}
    while pending:
        tensor = pending.pop()
        for layer, call in _consumers(b, tensor):
            inputs = _tensors(layer, call)
            if layer.class_name in MASK_PASSING or layer.class_name in MERGES or (
                    layer.class_name == "MultiHeadAttention" and inputs and inputs[0] == tensor):
                if layer.class_name in _KERAS3_VALUE_MERGES and keras3_dialect(layer.config):
                    raise UnsupportedLayerError(str(b.error(
                        f"the sequence mask made here reaches layer {layer.name!r} ({layer.class_name}), whose "
                        "Keras 3 output depends on the masks (masked steps left out of the product, maximum or "
                        "minimum), which bnkit does not implement", "no mask reaching Keras 3's Multiply, Maximum "
                        "or Minimum", layer.name)))
                if layer.class_name in MERGES and keras3_dialect(layer.config) and not all(
                        _carries(b, t) for t in inputs):
                    continue  # Keras 3: an input without a mask, so the merge output has none
                note = (f"the mask reaches BatchNormalization {layer.name!r}: Keras 3 leaves masked steps out of "
                        "its training statistics, bnkit does not (inference is the same)")
                if layer.class_name == "BatchNormalization" and \
                        f"{b.layer.name if b.layer else 'model'}: {note}" not in b.notes:  # once per source layer
                    b.note(note)
                out = (layer.name, call, 0)
                if out not in seen:
                    seen.add(out)
                    pending.append(out)
            elif layer.class_name not in _MASK_USING and layer.class_name not in MASK_DROPPING:
                raise UnsupportedLayerError(str(b.error(
                    f"the sequence mask made here reaches layer {layer.name!r} ({layer.class_name}), whose masked "
                    "computation bnkit does not implement",
                    f"the mask to reach only {', '.join(sorted(_MASK_USING | MASK_DROPPING))}, through "
                    f"{', '.join(sorted(MASK_PASSING | MERGES))}", layer.name)))


def tensor_mask(b: Builder, tensor: tuple[str, int, int] | None) -> Mask | None:
    """The mask Keras attaches to ``tensor`` (None: no mask), rebuilt from the masks made so
    far; a merge's mask is made here, when first asked for."""
    known = masks(b)
    while tensor is not None and tensor[2] == 0:
        if tensor in known:
            return known[tensor]
        layer = b.spec.layer(tensor[0])
        if layer.class_name in MERGES:
            return _merged(b, layer, tensor[1])
        if layer.class_name not in MASK_PASSING and layer.class_name != "MultiHeadAttention":
            return None
        inputs = _tensors(layer, tensor[1])  # that call's first input (an attention's query)
        if layer.class_name in MASK_PASSING and len(inputs) != 1:
            return None
        tensor = inputs[0] if inputs else None
    return None


def _merged(b: Builder, layer: LayerSpec, call: int) -> Mask | None:
    key: MaskKey = (layer.name, call, "merged")
    known = masks(b)
    if key in known:
        return known[key]
    found = [tensor_mask(b, t) for t in _tensors(layer, call)]
    present = [m for m in found if m is not None]
    keras3 = keras3_dialect(layer.config)
    if not present or (keras3 and len(present) != len(found)):
        return None
    if len(present) == 1:
        known[key] = present[0]
        return present[0]
    mode = "or" if keras3 else "and"
    slot = b.run(b.aux_name(f"{layer.name}_mask"), lambda: MaskMerge(mode), [m[0] for m in present], many=True)
    known[key] = (slot, (mode, tuple(m[1] for m in present), False))
    return known[key]


def incoming_mask(b: Builder, spec: LayerSpec) -> Mask | None:
    """The mask Keras would hand this layer (None: no mask): the one its first input carries.
    Only a layer's first output carries a mask (a recurrent layer's states carry none)."""
    inputs = _tensors(spec, b.call)
    return tensor_mask(b, inputs[0] if inputs else None)
