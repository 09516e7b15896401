"""Sequence masks while a graph is planned: which tensor carries which mask, as Keras
propagates them (see :mod:`bnkit.keras._rnn`).

A mask made by ``Embedding(mask_zero=True)`` or ``Masking`` goes with a layer's first
output: unchanged through the layers in :data:`MASK_PASSING`, applied by the recurrent
layers (which pass it on when they return sequences; their states carry none) and dropped
by ``Flatten``.  A mask that would reach any other layer is refused, since bnkit would
silently compute it unmasked.
"""
from __future__ import annotations

import weakref

from ._build import Builder
from ._config import LayerSpec
from .errors import UnsupportedLayerError

__all__ = ["MASK_PASSING", "RECURRENT", "Mask", "check_mask_reach", "incoming_mask", "masks"]

RECURRENT = ("SimpleRNN", "LSTM", "GRU")
#: Layers that hand a Keras mask on unchanged (tf_keras ``supports_masking``; Keras 3 alike).
MASK_PASSING = frozenset({"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "BatchNormalization",
                          "LayerNormalization", "Activation", "ReLU", "Dense"})
#: Layers whose output carries no mask and whose values do not depend on it.
_MASK_DROPPING = frozenset({"Flatten"})
#: A mask: its slot, and ``(layer, value, reduced)``: it is ``layer != value``, reduced with
#: ``any`` over the last axis (a Masking layer's) when ``reduced``.
Mask = tuple[int, "tuple[str, float, bool]"]
_MASKS: weakref.WeakKeyDictionary[Builder, dict[str, Mask]] = weakref.WeakKeyDictionary()


def masks(b: Builder) -> dict[str, Mask]:
    """Layer name -> the boolean mask its output carries (this build only)."""
    return _MASKS.setdefault(b, {})


def _consumers(b: Builder, name: str) -> list[LayerSpec]:
    """The layers fed by ``name``'s first output (the one a mask goes with; a recurrent layer's
    states carry none)."""
    return [layer for layer in b.spec.layers
            if any(t[0] == name and t[2] == 0 for call in (layer.calls or ((),)) for t in call)
            or not layer.calls and name in layer.inbound]


def check_mask_reach(b: Builder, source: str) -> None:
    """Refuse when the mask made at ``source`` reaches a layer bnkit does not mask."""
    pending, seen = [source], {source}
    while pending:
        for layer in _consumers(b, pending.pop()):
            if layer.class_name in MASK_PASSING:
                if layer.class_name == "BatchNormalization" and layer.name not in seen:
                    b.note(f"the mask reaches BatchNormalization {layer.name!r}: Keras 3 leaves masked steps out of "
                           "its training statistics, bnkit does not (inference is the same)")
                if layer.name not in seen:
                    seen.add(layer.name)
                    pending.append(layer.name)
            elif layer.class_name not in (*RECURRENT, "Bidirectional", *_MASK_DROPPING):
                raise UnsupportedLayerError(str(b.error(
                    f"the sequence mask made here reaches layer {layer.name!r} ({layer.class_name}), whose masked "
                    "computation bnkit does not implement",
                    f"the mask to reach only {', '.join((*RECURRENT, 'Bidirectional'))}, through "
                    f"{', '.join(sorted(MASK_PASSING))}", layer.name)))


def incoming_mask(b: Builder, spec: LayerSpec) -> Mask | None:
    """The mask Keras would hand this layer (None: no mask): the one its first input carries.
    Only a layer's first output carries a mask (a recurrent layer's states carry none)."""
    known = masks(b)
    tensor = _first_input(spec, b.call)
    while tensor is not None and tensor[2] == 0:
        if tensor[0] in known:
            return known[tensor[0]]
        layer = b.spec.layer(tensor[0])
        if layer.class_name not in MASK_PASSING or len(layer.inbound) != 1:
            return None
        tensor = _first_input(layer, 0)
    return None


def _first_input(spec: LayerSpec, call: int) -> tuple[str, int, int] | None:
    if spec.calls:
        inputs = spec.calls[call] if call < len(spec.calls) else ()
        return inputs[0] if inputs else None
    return (spec.inbound[0], 0, 0) if spec.inbound else None
