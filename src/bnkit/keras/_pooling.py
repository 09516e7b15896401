"""2-D pooling and padding layers: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
GlobalMaxPooling2D, ZeroPadding2D (no weights); and the masked mean of GlobalAveragePooling1D.

``GlobalAveragePooling1D`` given a sequence mask (``Embedding(mask_zero=True)``, ``Masking``)
averages the unmasked steps only: tf_keras ``sum(x * mask) / sum(mask)``, Keras 3
``sum(where(mask, x, 0)) / sum(mask)`` (they differ only for infinite or NaN masked
values); a row with every step masked gives ``0 / 0``, NaN, in both.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._build import Builder, Info, identity, image, layout, spatial
from ._config import LayerSpec
from ._entry import ExportState, Handler, LayerEntry
from ._layers import AvgPoolSame2d, GlobalPool2d, SamePad2d
from ._options import bool_option, choice, common, data_format, is_int, one_input, pair
from ._conv_plan import layout as conv_layout
from ._layers import keras3_dialect
from ._rnn_masks import describe, incoming_mask
from .errors import UnsupportedLayerError

__all__ = ["ENTRIES", "MaskedMean1d", "masked_global_average_1d"]


class MaskedMean1d(nn.Module):
    """Keras' masked ``GlobalAveragePooling1D`` on channels-first ``(N, C, T)`` data and a
    boolean ``(N, T)`` mask: the mean over the unmasked steps (``keras3``: masked values
    replaced by 0, tf_keras: multiplied by 0), kept as size 1 if ``keepdims``."""

    def __init__(self, keepdims: bool = False, keras3: bool = False) -> None:
        super().__init__()
        self.keepdims, self.keras3 = keepdims, keras3

    def forward(self, inputs: list[Tensor]) -> Tensor:
        x, mask = inputs[0], inputs[1][:, None, :]
        weights = mask.to(x.dtype)
        kept = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)) if self.keras3 else x * weights
        return kept.sum(dim=2, keepdim=self.keepdims) / weights.sum(dim=2, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}, keras3={self.keras3}"


def masked_global_average_1d(plain: Handler) -> Handler:
    """``GlobalAveragePooling1D``'s handler: ``plain`` without a mask, the masked mean with one."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        mask = incoming_mask(b, spec)
        recorded = spec.mask_of(b.call)
        if recorded is not None and (mask is None or mask[1] != recorded):
            raise UnsupportedLayerError(str(b.error(
                f"Keras 3 calls this layer with the mask `{describe(recorded)}`, which bnkit does not rebuild here",
                "the mask of an Embedding(mask_zero=True) or Masking layer on that input", recorded)))
        if mask is None:
            return plain(b, spec, xs)
        x, cfg = one_input(b, xs, 3), spec.config
        df, keepdims = data_format(b, cfg), bool_option(b, cfg, "keepdims", False)
        perm = conv_layout(3, df)
        keras3 = keras3_dialect(cfg)
        slot = b.run(spec.name, lambda: MaskedMean1d(keepdims, keras3), [b.take(x, perm), mask[0]], many=True)
        channels = x.shape[2] if df == "channels_last" else x.shape[1]
        config = {**common(spec), "data_format": df, "keepdims": keepdims}
        if keepdims:
            shape = (x.shape[0], 1, channels) if df == "channels_last" else (x.shape[0], channels, 1)
            return Info(shape, perm, slot), config
        return Info((x.shape[0], channels), identity(2), slot), config

    return handler


def _pool(mode: str) -> Handler:
    def pool(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, 4), spec.config
        df = data_format(b, cfg)
        size = pair(b, cfg, "pool_size", 2)
        stride = pair(b, cfg, "strides", list(size)) if cfg.get("strides") is not None else size
        padding = choice(b, cfg, "padding", ("valid", "same"), "valid")
        channels, height, width = spatial(x, df)
        perm = layout(df)
        slot = b.take(x, perm)
        out = []
        for n, k, s in zip((height, width), size, stride):
            value = None if n is None else (-(-n // s) if padding == "same" else (n - k) // s + 1)
            if value is not None and value < 1:
                raise b.error("the pool is larger than the input", f"spatial size >= {k}", n)
            out.append(value)
        if padding == "valid":
            factory: Callable[[], nn.Module] = (lambda: nn.MaxPool2d(size, stride)) if mode == "max" \
                else (lambda: nn.AvgPool2d(size, stride))
        elif mode == "max":
            slot = b.run(b.aux_name("pad"), lambda: SamePad2d(size, stride, value=-math.inf), [slot])
            factory = lambda: nn.MaxPool2d(size, stride)  # noqa: E731
        else:
            factory = lambda: AvgPoolSame2d(size, stride)  # noqa: E731
        slot = b.run(spec.name, factory, [slot])
        config = {**common(spec), "pool_size": list(size), "padding": padding, "strides": list(stride),
                  "data_format": df}
        return Info(image((channels, out[0], out[1]), df, x.shape[0]), perm, slot), config
    return pool


def _global_pool(mode: str) -> Handler:
    def pool(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, 4), spec.config
        df, keepdims = data_format(b, cfg), bool_option(b, cfg, "keepdims", False)
        channels = spatial(x, df)[0]
        slot = b.run(spec.name, lambda: GlobalPool2d(mode, keepdims), [b.take(x, layout(df))])
        config = {**common(spec), "data_format": df, "keepdims": keepdims}
        if keepdims:
            return Info(image((channels, 1, 1), df, x.shape[0]), layout(df), slot), config
        return Info((x.shape[0], channels), identity(2), slot), config
    return pool


def zero_padding(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs, 4), spec.config
    df, raw = data_format(b, cfg), cfg.get("padding", 1)
    if is_int(raw):
        raw = [[raw, raw], [raw, raw]]
    elif isinstance(raw, list) and len(raw) == 2 and all(is_int(v) for v in raw):
        raw = [[raw[0], raw[0]], [raw[1], raw[1]]]
    if not (isinstance(raw, list) and len(raw) == 2 and all(
            isinstance(p, list) and len(p) == 2 and all(is_int(v) and 0 <= v < 2**20 for v in p) for p in raw)):
        raise b.error("invalid `padding`", "an int, a pair, or ((top, bottom), (left, right))", cfg.get("padding"))
    (top, bottom), (left, right) = raw
    channels, height, width = spatial(x, df)
    slot = b.run(spec.name, lambda: nn.ZeroPad2d((left, right, top, bottom)), [b.take(x, layout(df))])
    shape = image((channels, _grow(height, top + bottom), _grow(width, left + right)), df, x.shape[0])
    return Info(shape, layout(df), slot), {**common(spec), "padding": raw, "data_format": df}


def _grow(size: int | None, extra: int) -> int | None:
    return None if size is None else size + extra


# ---- export of plain torch modules ---------------------------------------------------------
def _export_pool(state: ExportState, path: str, name: str, pool: nn.Module) -> int:
    def two(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]

    kernel, stride = two(pool.kernel_size), two(pool.stride if pool.stride is not None else pool.kernel_size)
    if len(state.shape) != 3 or two(pool.padding) != (0, 0) or pool.ceil_mode or \
            getattr(pool, "dilation", 1) not in (1, (1, 1)) or getattr(pool, "divisor_override", None) is not None:
        raise state.refuse(path, pool, "expected a 4-D input, no padding, ceil_mode=False, dilation 1")
    kind = "MaxPooling2D" if isinstance(pool, nn.MaxPool2d) else "AveragePooling2D"
    state.add(name, kind, {"pool_size": list(kernel), "padding": "valid", "strides": list(stride),
                           "data_format": "channels_last"})
    state.shape = (state.shape[0],) + tuple((n - k) // s + 1 for n, k, s in zip(state.shape[1:], kernel, stride))
    return 1


def _export_global(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    from ..layers import Flatten

    shape = state.shape
    size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
    if len(shape) != 3 or tuple(size) not in ((1, 1), tuple(shape[1:])):
        raise state.refuse(path, module, f"only global pooling (output 1x1) is expressible; output {size}")
    if tuple(size) == tuple(shape[1:]):
        return 1  # an identity at this input size (torchvision VGG's avgpool at 224)
    flat = isinstance(state.following, (nn.Flatten, Flatten))
    kind = "GlobalAveragePooling2D" if isinstance(module, nn.AdaptiveAvgPool2d) else "GlobalMaxPooling2D"
    state.add(name, kind, {"data_format": "channels_last", "keepdims": not flat})
    state.shape = (shape[0],) if flat else (shape[0], 1, 1)
    return 2 if flat else 1


def _export_zero_padding(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    if len(state.shape) != 3:
        return 0
    left, right, top, bottom = module.padding
    state.add(name, "ZeroPadding2D", {"padding": [[top, bottom], [left, right]], "data_format": "channels_last"})
    c, h, w = state.shape
    state.shape = (c, h + top + bottom, w + left + right)
    return 1


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("MaxPooling2D", _pool("max"), aliases=("MaxPool2D",), torch_types=(nn.MaxPool2d,),
               export=_export_pool),
    LayerEntry("AveragePooling2D", _pool("avg"), aliases=("AvgPool2D",), torch_types=(nn.AvgPool2d,),
               export=_export_pool),
    LayerEntry("GlobalAveragePooling2D", _global_pool("avg"), aliases=("GlobalAvgPool2D",),
               torch_types=(nn.AdaptiveAvgPool2d,), export=_export_global),
    LayerEntry("GlobalMaxPooling2D", _global_pool("max"), aliases=("GlobalMaxPool2D",),
               torch_types=(nn.AdaptiveMaxPool2d,), export=_export_global),
    LayerEntry("ZeroPadding2D", zero_padding, torch_types=(nn.ZeroPad2d,), export=_export_zero_padding),
)
