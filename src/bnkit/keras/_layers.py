"""Small torch modules for the Keras operations PyTorch has no exact module for, and the
table of Keras activations by name (:data:`ACTIVATIONS`, every built-in name of tf_keras 2
and Keras 3, shared by ``Activation`` layers and ``activation=`` arguments).

The padding and pooling modules work on NCHW tensors (the builder moves channels-last data
there first).
TensorFlow's ``padding="same"`` pads ``total = max((ceil(n/s) - 1)*s + (k - 1)*d + 1 - n, 0)``
per spatial axis, ``total // 2`` before and the rest after, so an odd total puts the extra
row/column at the bottom/right, which PyTorch's symmetric ``padding=`` cannot express.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .._repr import short

__all__ = ["ACTIVATIONS", "ELEMENTWISE", "KERAS3_ELEMENTWISE", "KERAS3_POLICY", "Add", "AvgPoolSame2d", "Concatenate",
           "GlobalPool2d", "Glu", "KerasActivation", "KerasReLU", "MultiSoftmax", "SamePad2d", "activation_module",
           "keras3_dialect", "same_padding"]


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
        if self.negative_slope == 0.0 and self.threshold == 0.0:  # ReLU / ReLU6 (MobileNets): one kernel
            return torch.clamp(x, min=0.0, max=self.max_value)
        y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        if self.max_value is not None:
            y = torch.clamp(y, max=self.max_value)
        return y

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


def _hard_sigmoid_tf(x: Tensor) -> Tensor:  # tf_keras 2: clip(0.2 x + 0.5, 0, 1)
    return torch.clamp(x * 0.2 + 0.5, 0.0, 1.0)


def _hard_sigmoid(x: Tensor) -> Tensor:  # Keras 3: relu6(x + 3) / 6
    return F.relu6(x + 3.0) / 6.0


def _sparse_plus(x: Tensor) -> Tensor:
    return torch.where(x <= -1.0, torch.zeros_like(x), torch.where(x >= 1.0, x, (x + 1.0) ** 2 / 4.0))


def _soft_shrink(x: Tensor) -> Tensor:
    return torch.where(x > 0.5, x - 0.5, torch.where(x < -0.5, x + 0.5, torch.zeros_like(x)))


def _celu(x: Tensor) -> Tensor:  # alpha = 1
    return torch.relu(x) + torch.clamp(torch.expm1(x), max=0.0)


#: Keras activation name -> elementwise function (Keras' defaults for every parameter).
ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "elu": F.elu, "selu": F.selu, "softplus": F.softplus, "softsign": F.softsign,
    "swish": F.silu, "silu": F.silu, "gelu": F.gelu, "exponential": torch.exp, "mish": F.mish,
    "hard_sigmoid": _hard_sigmoid_tf, "hard_silu": lambda x: x * _hard_sigmoid(x),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "celu": _celu,
    "hard_tanh": lambda x: torch.clamp(x, -1.0, 1.0),
    "hard_shrink": lambda x: torch.where(torch.abs(x) > 0.5, x, torch.zeros_like(x)),
    "soft_shrink": _soft_shrink, "tanh_shrink": lambda x: x - torch.tanh(x), "log_sigmoid": F.logsigmoid,
    "sparse_plus": _sparse_plus, "sparse_sigmoid": lambda x: torch.clamp((x + 1.0) * 0.5, 0.0, 1.0),
    "squareplus": lambda x: (x + torch.sqrt(x * x + 4.0)) * 0.5,
}
ELEMENTWISE["hard_swish"] = ELEMENTWISE["hard_silu"]

#: Names whose meaning changed in Keras 3 (the table above holds tf_keras 2's).
KERAS3_ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {"hard_sigmoid": _hard_sigmoid}


class KerasActivation(nn.Module):
    """A Keras activation by name, elementwise (``dim`` unused) or along torch dim ``dim``
    (``softmax``, ``log_softmax``, ``sparsemax``).  ``keras3`` picks Keras 3's meaning where
    the name changed (``hard_sigmoid``: tf_keras ``clip(0.2x+0.5, 0, 1)``, Keras 3 ``relu6(x+3)/6``)."""

    def __init__(self, name: str, dim: int = -1, keras3: bool = False) -> None:
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"`name` must be a Keras activation, one of {sorted(ACTIVATIONS)}; received: {name!r}")
        self.name, self.dim, self.keras3 = name, dim, keras3 and name in KERAS3_ELEMENTWISE

    def forward(self, x: Tensor) -> Tensor:
        fn = (KERAS3_ELEMENTWISE if self.keras3 else ELEMENTWISE).get(self.name)
        if fn is not None:
            return fn(x)
        if self.name == "softmax":
            return torch.softmax(x, self.dim)
        if self.name == "log_softmax":
            return torch.log_softmax(x, self.dim)
        return _sparsemax(x, self.dim)

    def extra_repr(self) -> str:
        along = f", dim={self.dim}" if self.name not in ELEMENTWISE else ""
        return f"{self.name!r}{along}" + (", keras3=True" if self.keras3 else "")


class Glu(nn.Module):
    """Keras 3's ``glu`` activation along torch dim ``dim`` (Keras' last axis): that axis is
    split into halves ``a, b`` and ``a * sigmoid(b)`` returned, so the output has half as
    many features (Dauphin et al. 2017).  tf_keras 2 has no ``glu``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.dim] % 2:
            raise ValueError(f"glu splits dim {self.dim} in halves: expected an even size; received shape "
                             f"{tuple(x.shape)}")
        a, b = x.chunk(2, dim=self.dim)
        return a * torch.sigmoid(b)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _sparsemax(x: Tensor, dim: int) -> Tensor:
    """Keras 3's ``sparsemax`` along ``dim``, as every Keras backend computes it.

    The support ``k`` is the paper's (Martins & Astudillo 2016), but Keras' threshold is
    ``tau = (sum over the support of the cumulative sums - 1) / k`` rather than the cumulative
    sum at ``k``; the two agree when the support has one element.  bnkit matches Keras.
    """
    z = x.movedim(dim, -1)
    ordered = torch.sort(z, dim=-1, descending=True).values
    cumulative = ordered.cumsum(dim=-1)
    ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    support = ordered - (cumulative - 1) / ranks > 0
    k = support.sum(dim=-1, keepdim=True).to(z.dtype)
    tau = (torch.where(support, cumulative, torch.zeros_like(cumulative)).sum(dim=-1, keepdim=True) - 1) / k
    return torch.clamp(z - tau, min=0.0).movedim(-1, dim)


#: The dtype Keras 3 writes for a float32 layer (see :func:`keras3_dialect`).
KERAS3_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                 "registered_name": None}


def keras3_dialect(config: dict[str, Any]) -> bool:
    """True for a layer config written by Keras 3 (its dtype is a ``DTypePolicy`` dict).

    Needed where one name means two things: ``hard_sigmoid`` is ``clip(0.2x + 0.5, 0, 1)`` in
    tf_keras 2 and ``relu6(x + 3) / 6`` in Keras 3.
    """
    return isinstance(config.get("dtype"), dict)


def activation_module(name: str, dim: int, keras3: bool = False) -> nn.Module:
    """The torch module of Keras activation ``name`` (torch dim ``dim`` = Keras' last axis);
    ``glu`` (Keras 3 only, it halves that axis) is :class:`Glu`."""
    if name == "glu":
        return Glu(dim)
    return ACTIVATIONS[name](dim) if not keras3 or name not in KERAS3_ELEMENTWISE else KerasActivation(name, dim, True)


def _plain(name: str) -> Callable[[int], nn.Module]:
    return lambda dim: KerasActivation(name, dim)


class MultiSoftmax(nn.Module):
    """Softmax (or log-softmax) over several torch dims at once, as Keras' ``Softmax(axis=[...])``."""

    def __init__(self, dims: tuple[int, ...], log: bool = False) -> None:
        super().__init__()
        self.dims, self.log = dims, log

    def forward(self, x: Tensor) -> Tensor:
        shifted = x - torch.amax(x, dim=self.dims, keepdim=True)
        if self.log:
            return shifted - torch.logsumexp(shifted, dim=self.dims, keepdim=True)
        e = torch.exp(shifted)
        return e / e.sum(dim=self.dims, keepdim=True)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, log={self.log}"


#: Keras activation name -> torch module factory (given the torch dim of Keras' last axis).
#: Every built-in name of tf_keras 2.21 and Keras 3 except ``glu`` (it halves an axis, so only
#: the layers whose output shape follows it take it: see :func:`bnkit.keras._options.activation_name`)
#: and ``threshold`` (it has no default arguments); ``linear`` is the identity and is not listed.
ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda dim: nn.ReLU(),
    "sigmoid": lambda dim: nn.Sigmoid(),
    "tanh": lambda dim: nn.Tanh(),
    "softmax": lambda dim: nn.Softmax(dim=dim),
    "elu": lambda dim: nn.ELU(),
    "selu": lambda dim: nn.SELU(),
    "softplus": lambda dim: nn.Softplus(),
    "softsign": lambda dim: nn.Softsign(),
    "swish": lambda dim: nn.SiLU(),
    "silu": lambda dim: nn.SiLU(),
    "gelu": lambda dim: nn.GELU(),
    "relu6": lambda dim: nn.ReLU6(),
    "mish": lambda dim: nn.Mish(),
    "log_softmax": lambda dim: nn.LogSoftmax(dim=dim),
    "leaky_relu": lambda dim: nn.LeakyReLU(0.2),
    **{name: _plain(name) for name in ("exponential", "hard_sigmoid", "hard_silu", "hard_swish", "celu",
                                       "hard_tanh", "hard_shrink", "soft_shrink", "tanh_shrink", "log_sigmoid",
                                       "sparse_plus", "sparse_sigmoid", "squareplus", "sparsemax")},
}
