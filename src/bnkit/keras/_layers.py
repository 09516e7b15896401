"""Small torch modules for the Keras operations PyTorch has no exact module for.

All of them work on NCHW tensors (the builder moves channels-last data there first).
TensorFlow's ``padding="same"`` pads ``total = max((ceil(n/s) - 1)*s + (k - 1)*d + 1 - n, 0)``
per spatial axis, ``total // 2`` before and the rest after, so an odd total puts the extra
row/column at the bottom/right, which PyTorch's symmetric ``padding=`` cannot express.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .._repr import short

__all__ = ["ACTIVATIONS", "Add", "AvgPoolSame2d", "Concatenate", "GlobalPool2d", "KerasReLU", "SamePad2d",
           "same_padding"]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding ``(before, after)`` for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Pad an NCHW tensor as TensorFlow's ``"same"`` does for its current spatial size."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1), value: float = 0.0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation, self.value = kernel_size, stride, dilation, value

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, value={self.value}"


class AvgPoolSame2d(nn.Module):
    """Average pooling with TensorFlow's ``"same"`` padding: padded cells are not counted."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.pad = SamePad2d(kernel_size, stride)
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        total = F.avg_pool2d(self.pad(x), self.kernel_size, self.stride)
        ones = x.new_ones((1, 1) + tuple(x.shape[-2:]))
        return total / F.avg_pool2d(self.pad(ones), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class GlobalPool2d(nn.Module):
    """Keras ``GlobalAveragePooling2D`` / ``GlobalMaxPooling2D`` on NCHW: ``(N, C)`` or ``(N, C, 1, 1)``."""

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"`mode` must be 'avg' or 'max'; received: mode={short(mode)}")
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3), keepdim=self.keepdims)
        return x.amax(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keepdims={self.keepdims}"


class Add(nn.Module):
    """Keras ``Add``: the sum of a list of tensors."""

    def forward(self, inputs: list[Tensor]) -> Tensor:
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total


class Concatenate(nn.Module):
    """Keras ``Concatenate`` along torch dimension ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, inputs: list[Tensor]) -> Tensor:
        return torch.cat(inputs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class KerasReLU(nn.Module):
    """Keras ``ReLU(max_value, negative_slope, threshold)``:
    ``max_value`` above it, ``x`` on ``[threshold, max_value)``, ``negative_slope*(x - threshold)`` below."""

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0) -> None:
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: Tensor) -> Tensor:
        y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        if self.max_value is not None:
            y = torch.clamp(y, max=self.max_value)
        return y

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


def _softmax(dim: int) -> nn.Module:
    return nn.Softmax(dim=dim)


#: Keras activation name -> torch module factory (given the torch dim of Keras' last axis).
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda dim: nn.ReLU(),
    "sigmoid": lambda dim: nn.Sigmoid(),
    "tanh": lambda dim: nn.Tanh(),
    "softmax": _softmax,
    "elu": lambda dim: nn.ELU(),
    "selu": lambda dim: nn.SELU(),
    "softplus": lambda dim: nn.Softplus(),
    "softsign": lambda dim: nn.Softsign(),
    "swish": lambda dim: nn.SiLU(),
    "silu": lambda dim: nn.SiLU(),
    "gelu": lambda dim: nn.GELU(),
    "relu6": lambda dim: nn.ReLU6(),
}
