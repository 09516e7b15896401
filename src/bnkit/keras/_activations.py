"""Activation layers and merges: Activation, ReLU, Softmax, Add, Concatenate (no weights)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ._build import Builder, Info
from ._config import LayerSpec
from ._entry import ExportState, Handler, LayerEntry
from ._layers import (KERAS3_ELEMENTWISE, KERAS3_POLICY, Add, Concatenate, Glu, KerasReLU, MultiSoftmax,
                      activation_module, keras3_dialect)
from ._options import ACTIVATION_TYPES, activation_name, activation_of, axis_option, common, float_option, one_input
from ._rnn_masks import merge_dtype

__all__ = ["ENTRIES"]


def activation(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x = one_input(b, xs)
    name = activation_name(b, spec.config.get("activation"), glu=keras3_dialect(spec.config))
    if name == "glu":
        return _glu(b, spec, x)
    if name == "linear":
        slot = x.slot
    else:
        dim = x.perm.index(len(x.shape) - 1)
        keras3 = keras3_dialect(spec.config) and name in KERAS3_ELEMENTWISE  # hard_sigmoid changed in Keras 3
        slot = b.run(spec.name, lambda: activation_module(name, dim, keras3), [x.slot])
        if keras3:  # written with Keras 3's dtype policy, so that bnkit and Keras 3 read it back the same
            return Info(x.shape, x.perm, slot), {**common(spec), "activation": name, "dtype": KERAS3_POLICY}
    return Info(x.shape, x.perm, slot), {**common(spec), "activation": name}


def _glu(b: Builder, spec: LayerSpec, x: Info) -> tuple[Info, dict[str, Any]]:
    """Keras 3's ``Activation("glu")``: the last axis halved (Keras 3's own summary keeps the
    input shape; the tensor it computes has half the features, as here)."""
    size = x.shape[-1]
    if size is not None and size % 2:
        raise b.error("`activation='glu'` splits the last axis in halves", "an even size", x.shape)
    dim = x.perm.index(len(x.shape) - 1)
    slot = b.run(spec.name, lambda: Glu(dim), [x.slot])
    shape = x.shape[:-1] + (None if size is None else size // 2,)
    return Info(shape, x.perm, slot), {**common(spec), "activation": "glu", "dtype": dict(KERAS3_POLICY)}


def relu(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    max_value = cfg.get("max_value")
    if max_value is not None:
        max_value = float_option(b, cfg, "max_value", 0.0, 0.0, math.inf)
    slope = float_option(b, cfg, "negative_slope", 0.0, 0.0, math.inf)
    threshold = float_option(b, cfg, "threshold", 0.0, -math.inf, math.inf)
    if (max_value, slope, threshold) == (None, 0.0, 0.0):
        factory: Callable[[], nn.Module] = nn.ReLU
    else:
        factory = lambda: KerasReLU(max_value, slope, threshold)  # noqa: E731
    slot = b.run(spec.name, factory, [x.slot])
    config = {**common(spec), "max_value": max_value, "negative_slope": slope, "threshold": threshold}
    return Info(x.shape, x.perm, slot), config


def softmax(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, raw = one_input(b, xs), spec.config.get("axis", -1)
    if isinstance(raw, list) and len(raw) > 1:  # Keras: one softmax over several axes
        axes = sorted({axis_option(b, a, len(x.shape)) for a in raw})
        dims = tuple(sorted(x.perm.index(a) for a in axes))
        slot = b.run(spec.name, lambda: MultiSoftmax(dims), [x.slot])
        return Info(x.shape, x.perm, slot), {**common(spec), "axis": axes}
    axis = axis_option(b, raw, len(x.shape))
    dim = x.perm.index(axis)
    slot = b.run(spec.name, lambda: nn.Softmax(dim=dim), [x.slot])
    return Info(x.shape, x.perm, slot), {**common(spec), "axis": axis}


def _merge(kind: str) -> Handler:
    def merge(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        if len(xs) < 2 or len({len(x.shape) for x in xs}) != 1:
            raise b.error("inputs of one rank needed", "two or more inputs of equal rank", [x.shape for x in xs])
        rank, perm = len(xs[0].shape), xs[0].perm
        slots = [b.take(x, perm) for x in xs]
        if kind == "add":
            shape = tuple(next((d for d in dims if d is not None), None) for dims in zip(*(x.shape for x in xs)))
            return Info(shape, perm, b.run(spec.name, Add, slots, many=True)), \
                {**common(spec), "dtype": merge_dtype(b, spec)}  # Keras 3's when a mask reaches it
        axis = axis_option(b, spec.config.get("axis", -1), rank)
        total = None if any(x.shape[axis] is None for x in xs) else sum(x.shape[axis] for x in xs)  # type: ignore[misc]
        dim = perm.index(axis)
        shape = xs[0].shape[:axis] + (total,) + xs[0].shape[axis + 1:]
        slot = b.run(spec.name, lambda: Concatenate(dim), slots, many=True)
        return Info(shape, perm, slot), {**common(spec), "axis": axis}
    return merge


# ---- export of plain torch modules ---------------------------------------------------------
def _export_softmax(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    from ._build import moved

    rank = len(state.shape) + 1
    dim = (module.dim if module.dim is not None else 1) % rank
    state.add(name, "Softmax", {"axis": moved(rank)[dim]})
    return 1


def _export_activation(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    found = activation_of(module)
    if found is None:
        return 0
    state.add(name, "Activation", {"activation": found})
    return 1


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("Softmax", softmax, torch_types=(nn.Softmax,), export=_export_softmax),
    LayerEntry("Activation", activation, torch_types=ACTIVATION_TYPES, export=_export_activation),
    LayerEntry("ReLU", relu),
    LayerEntry("Add", _merge("add")),
    LayerEntry("Concatenate", _merge("concatenate")),
)
