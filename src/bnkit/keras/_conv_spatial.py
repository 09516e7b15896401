"""Keras' spatial layers without weights, for 1, 2 or 3 spatial axes: pooling (``"same"``
average pooling counts only input cells, as TensorFlow does), global pooling, zero
padding, cropping and upsampling (nearest; bilinear for 2-D).  2-D pooling, global
pooling and zero padding are in :mod:`._pooling`; the rest are here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ._build import Builder, Info, identity
from ._config import LayerSpec
from ._conv_plan import geometry, int_tuple, join, layout, split
from ._conv_layers import AvgPoolSame, Crop, GlobalPool, SamePad, UpsampleBilinear2d, UpsampleNearest, pad_arguments
from ._entry import Handler
from ._options import bool_option, choice, common, data_format, is_int, one_input
from .errors import UnsupportedLayerError

__all__ = ["cropping", "global_pool", "pool", "upsampling", "zero_padding"]

_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_PAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}
#: interpolations UpSampling2D may name; only these two are exact in torch.
_INTERPOLATIONS = ("nearest", "bilinear")


def pool(mode: str, rank: int) -> Handler:
    """MaxPooling1D/3D or AveragePooling1D/3D."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        df = data_format(b, cfg)
        size = int_tuple(b, cfg, "pool_size", rank, 2)
        stride = int_tuple(b, cfg, "strides", rank, list(size))
        padding = choice(b, cfg, "padding", ("valid", "same"), "valid")
        channels, sizes = split(x, df)
        perm = layout(rank + 2, df)
        out, _ = geometry(b, sizes, size, stride, (1,) * rank, padding)
        slot = b.take(x, perm)
        if padding == "valid":
            factory: Callable[[], nn.Module] = (lambda: _MAX_POOL[rank](size, stride)) if mode == "max" \
                else (lambda: _AVG_POOL[rank](size, stride))
        elif mode == "max":
            slot = b.run(b.aux_name("pad"), lambda: SamePad(size, stride, value=-math.inf), [slot])
            factory = lambda: _MAX_POOL[rank](size, stride)  # noqa: E731
        else:
            factory = lambda: AvgPoolSame(size, stride)  # noqa: E731
        slot = b.run(spec.name, factory, [slot])
        config = {**common(spec), "pool_size": list(size), "padding": padding, "strides": list(stride),
                  "data_format": df}
        return Info(join(x.shape[0], channels, out, df), perm, slot), config

    return handler


def global_pool(mode: str, rank: int) -> Handler:
    """GlobalAveragePooling1D/3D or GlobalMaxPooling1D/3D (``keepdims`` too)."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        df, keepdims = data_format(b, cfg), bool_option(b, cfg, "keepdims", False)
        channels, _ = split(x, df)
        perm = layout(rank + 2, df)
        slot = b.run(spec.name, lambda: GlobalPool(mode, keepdims), [b.take(x, perm)])
        config = {**common(spec), "data_format": df, "keepdims": keepdims}
        if keepdims:
            return Info(join(x.shape[0], channels, (1,) * rank, df), perm, slot), config
        return Info((x.shape[0], channels), identity(2), slot), config

    return handler


def _pairs(b: Builder, cfg: dict[str, Any], key: str, rank: int, default: Any) -> tuple[tuple[int, int], ...]:
    """Keras' padding/cropping forms: an int, ``rank`` ints (symmetric), or ``rank`` pairs;
    a single pair for one axis."""
    raw = cfg.get(key, default)
    value: Any = raw
    if is_int(value):
        value = [[value, value]] * rank
    elif isinstance(value, list) and rank == 1 and len(value) == 2 and all(is_int(v) for v in value):
        value = [value]
    elif isinstance(value, list) and len(value) == rank and all(is_int(v) for v in value):
        value = [[v, v] for v in value]
    if not (isinstance(value, list) and len(value) == rank and all(
            isinstance(p, list) and len(p) == 2 and all(is_int(v) and 0 <= v < 2**20 for v in p) for p in value)):
        form = "an int or (before, after)" if rank == 1 else f"an int, {rank} ints or {rank} (before, after) pairs"
        raise b.error(f"invalid `{key}`", form, raw)
    return tuple((int(p[0]), int(p[1])) for p in value)


def _written(pairs: tuple[tuple[int, int], ...]) -> Any:
    return list(pairs[0]) if len(pairs) == 1 else [list(p) for p in pairs]


def zero_padding(rank: int) -> Handler:
    """ZeroPadding1D/3D."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        df = data_format(b, cfg)
        pads = _pairs(b, cfg, "padding", rank, 1)
        channels, sizes = split(x, df)
        perm, arguments = layout(rank + 2, df), pad_arguments(pads)
        slot = b.run(spec.name, lambda: _PAD[rank](arguments, 0.0), [b.take(x, perm)])
        out = [None if n is None else n + before + after for n, (before, after) in zip(sizes, pads)]
        config = {**common(spec), "padding": _written(pads)}
        if rank > 1 or df == "channels_first":  # tf_keras' ZeroPadding1D has no data_format (Keras 3's has)
            config["data_format"] = df
        return Info(join(x.shape[0], channels, out, df), perm, slot), config

    return handler


def cropping(rank: int) -> Handler:
    """Cropping1D/2D/3D."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        df = data_format(b, cfg) if rank > 1 else "channels_last"
        crops = _pairs(b, cfg, "cropping", rank, 1)
        channels, sizes = split(x, df)
        out = []
        for n, (before, after) in zip(sizes, crops):
            if n is not None and n - before - after < 1:
                raise b.error("the cropping removes the whole input", f"before + after < {n}", [before, after])
            out.append(None if n is None else n - before - after)
        perm = layout(rank + 2, df)
        slot = b.run(spec.name, lambda: Crop(crops), [b.take(x, perm)])
        config = {**common(spec), "cropping": _written(crops)}
        if rank > 1:
            config["data_format"] = df
        return Info(join(x.shape[0], channels, out, df), perm, slot), config

    return handler


def upsampling(rank: int) -> Handler:
    """UpSampling1D/2D/3D: nearest repeats; UpSampling2D also ``interpolation="bilinear"``."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, rank + 2), spec.config
        df = data_format(b, cfg) if rank > 1 else "channels_last"
        size = int_tuple(b, cfg, "size", rank, 2)
        interpolation = cfg.get("interpolation", "nearest") if rank == 2 else "nearest"
        if not isinstance(interpolation, str) or interpolation.lower() not in _INTERPOLATIONS:
            raise UnsupportedLayerError(str(b.error(
                "unsupported `interpolation` (no exact torch equivalent)", f"one of {_INTERPOLATIONS}", interpolation)))
        interpolation = interpolation.lower()
        channels, sizes = split(x, df)
        perm = layout(rank + 2, df)
        if interpolation == "bilinear":
            factory: Callable[[], nn.Module] = lambda: UpsampleBilinear2d(size)  # noqa: E731
        else:
            factory = lambda: UpsampleNearest(size)  # noqa: E731
        slot = b.run(spec.name, factory, [b.take(x, perm)])
        out = [None if n is None else n * s for n, s in zip(sizes, size)]
        config: dict[str, Any] = {**common(spec), "size": size[0] if rank == 1 else list(size)}
        if rank > 1:
            config["data_format"] = df
        if rank == 2:
            config["interpolation"] = interpolation
        return Info(join(x.shape[0], channels, out, df), perm, slot), config

    return handler
