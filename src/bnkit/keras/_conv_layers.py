"""Torch modules for Keras' 1-D/3-D convolution family and its spatial helpers.

Every module works channels-first (``(N, C, *spatial)``, any number of spatial axes: the
builder moves channels-last data there first) and takes its geometry per spatial axis.
TensorFlow's ``padding="same"`` pads ``total = max((ceil(n/s) - 1)*s + (k - 1)*d + 1 - n, 0)``
per axis, ``total // 2`` before and the rest after (see :func:`._layers.same_padding`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import same_padding

__all__ = ["AvgPoolSame", "Crop", "GlobalPool", "SamePad", "SeparableConv", "UpsampleBilinear2d", "UpsampleNearest",
           "pad_arguments"]

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def pad_arguments(pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """``F.pad``'s argument for ``(before, after)`` per spatial axis, first axis first."""
    return tuple(v for before, after in reversed(pads) for v in (before, after))


class SamePad(nn.Module):
    """Pad a channels-first tensor as TensorFlow's ``"same"`` does for its current spatial size.

    Used when the padding depends on a size unknown when the model is planned (a ``None``
    dimension with stride > 1); ``value=-inf`` gives max pooling's padding.
    """

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int] | None = None,
                 value: float = 0.0) -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.dilation = tuple(dilation) if dilation is not None else (1,) * len(self.kernel_size)
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        sizes = x.shape[x.dim() - len(self.kernel_size):]
        pads = [same_padding(n, k, s, d) for n, k, s, d in zip(sizes, self.kernel_size, self.stride, self.dilation)]
        return F.pad(x, pad_arguments(pads), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, value={self.value}"


class AvgPoolSame(nn.Module):
    """Average pooling with TensorFlow's ``"same"`` padding over 1-3 spatial axes.

    TensorFlow divides each window's sum by the number of *input* cells it covers (padded
    cells are not counted), which no PyTorch pooling option reproduces at asymmetric pads.
    """

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        if len(kernel_size) not in _AVG_POOL or len(stride) != len(kernel_size):
            raise ValueError(f"`kernel_size` and `stride` must have 1 to 3 entries each; received "
                             f"kernel_size={tuple(kernel_size)!r}, stride={tuple(stride)!r}")
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.pad = SamePad(self.kernel_size, self.stride)

    def forward(self, x: Tensor) -> Tensor:
        pool = _AVG_POOL[len(self.kernel_size)]
        total = pool(self.pad(x), self.kernel_size, self.stride)
        ones = x.new_ones((1, 1) + tuple(x.shape[2:]))
        return total / pool(self.pad(ones), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalPool(nn.Module):
    """Keras ``GlobalAveragePooling{1,2,3}D`` / ``GlobalMaxPooling{1,2,3}D`` on channels-first
    data: the mean or max over every axis after the channels, kept as size 1 if ``keepdims``."""

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"`mode` must be 'avg' or 'max'; received: mode={mode!r}")
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(2, x.dim()))
        if self.mode == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        return x.amax(dim=dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keepdims={self.keepdims}"


class Crop(nn.Module):
    """Keras ``Cropping{1,2,3}D``: drop ``(before, after)`` cells of each trailing spatial axis."""

    def __init__(self, crops: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.crops = tuple((int(before), int(after)) for before, after in crops)

    def forward(self, x: Tensor) -> Tensor:
        first = x.dim() - len(self.crops)
        index = [slice(None)] * first + [slice(before, x.shape[first + i] - after)
                                         for i, (before, after) in enumerate(self.crops)]
        return x[tuple(index)]

    def extra_repr(self) -> str:
        return f"crops={self.crops}"


class UpsampleNearest(nn.Module):
    """Keras ``UpSampling{1,2,3}D`` (nearest): every cell repeated ``size[i]`` times along
    trailing spatial axis ``i``.  Integer repeats are exact, unlike a float scale factor."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: Tensor) -> Tensor:
        lead = tuple(x.shape[:x.dim() - len(self.size)])
        sizes = tuple(x.shape[len(lead):])
        spread = x.reshape(lead + tuple(v for n in sizes for v in (n, 1)))  # a size-1 axis after each axis
        spread = spread.expand(lead + tuple(v for n, f in zip(sizes, self.size) for v in (n, f)))
        return spread.reshape(lead + tuple(n * f for n, f in zip(sizes, self.size)))  # one copy

    def extra_repr(self) -> str:
        return f"size={self.size}"


class UpsampleBilinear2d(nn.Module):
    """Keras ``UpSampling2D(interpolation="bilinear")`` on NCHW.

    Keras calls ``tf.image.resize`` (half-pixel centres, no antialiasing), whose source
    coordinate ``(i + 0.5) / s - 0.5`` clamped at the edges is PyTorch's
    ``align_corners=False`` bilinear rule.
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        return F.interpolate(x, size=(height * self.size[0], width * self.size[1]), mode="bilinear",
                             align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class SeparableConv(nn.Module):
    """Keras ``SeparableConv1D/2D``: a depthwise conv (``groups=in_channels``, no bias) then a
    pointwise 1x1 conv carrying the bias.  Folding a following batch norm into ``pointwise``
    is exact (it is an ordinary conv)."""

    def __init__(self, depthwise: nn.Module, pointwise: nn.Module) -> None:
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))
