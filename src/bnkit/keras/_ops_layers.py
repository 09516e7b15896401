"""Torch modules for Keras' shape, arithmetic, normalisation and parametric activation layers.

Every module works on the torch layout the planner chose: a Keras tensor ``x`` lives in
torch as ``x.permute(perm)``.  Per-axis constants and weights are stored in Keras' own
shape (so the weight table copies them as they are) and viewed into the torch layout with
:func:`keras_view` when used.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Affine", "ConstantOp", "KerasLayerNorm", "KerasNormalization", "KerasPReLU", "LayerScale", "Merge",
           "Reduce", "RepeatVector", "Reshape", "ScaleAdd", "Slot", "TrainingNoise", "ThresholdedReLU", "keras_view"]


def keras_view(tensor: Tensor, broadcast: Sequence[int], perm: Sequence[int]) -> Tensor:
    """``tensor`` (Keras values) reshaped to the Keras ``broadcast`` shape, then permuted to torch's layout."""
    return tensor.reshape(tuple(broadcast)).permute(tuple(perm))


class Affine(nn.Module):
    """Keras ``Rescaling``: ``x * scale + offset`` (scalars, or tensors in the torch layout)."""

    def __init__(self, scale: float | Tensor, offset: float | Tensor) -> None:
        super().__init__()
        self.scale = scale if not isinstance(scale, Tensor) else None
        self.offset = offset if not isinstance(offset, Tensor) else None
        if isinstance(scale, Tensor):
            self.register_buffer("scale_values", scale, persistent=False)
        if isinstance(offset, Tensor):
            self.register_buffer("offset_values", offset, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale if self.scale is not None else self.scale_values.to(x.dtype)
        offset = self.offset if self.offset is not None else self.offset_values.to(x.dtype)
        return x * scale + offset

    def extra_repr(self) -> str:
        return f"scale={self.scale if self.scale is not None else 'per-axis'}, " \
               f"offset={self.offset if self.offset is not None else 'per-axis'}"


class KerasNormalization(nn.Module):
    """Keras ``Normalization``: ``(x - mean) / max(sqrt(variance), 1e-7)``, or its inverse.

    With ``stored=True`` the statistics are the layer's Keras weights (``adapted_mean``,
    ``adapted_variance`` and the ``count`` Keras keeps beside them, in Keras' shape: the kept
    axes); otherwise they are the config's constants (``mean``, ``variance``, not saved).
    """

    def __init__(self, shape: tuple[int, ...], broadcast: tuple[int, ...], perm: tuple[int, ...], invert: bool,
                 stored: bool, mean: Tensor | None = None, variance: Tensor | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.broadcast, self.perm, self.invert, self.stored = broadcast, perm, invert, stored
        mean = torch.zeros(shape, device=device) if mean is None else mean.reshape(shape)
        variance = torch.ones(shape, device=device) if variance is None else variance.reshape(shape)
        if stored:
            self.register_buffer("adapted_mean", mean)
            self.register_buffer("adapted_variance", variance)
            self.register_buffer("count", torch.zeros((), device=device))
        else:
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("variance", variance, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        mean, variance = (self.adapted_mean, self.adapted_variance) if self.stored else (self.mean, self.variance)
        mean = keras_view(mean, self.broadcast, self.perm).to(x.dtype)  # Keras' compute dtype, then sqrt
        std = torch.clamp(torch.sqrt(keras_view(variance, self.broadcast, self.perm).to(x.dtype)), min=1e-7)
        return mean + x * std if self.invert else (x - mean) / std

    def extra_repr(self) -> str:
        return f"broadcast={self.broadcast}, invert={self.invert}, stored={self.stored}"


class Reshape(nn.Module):
    """Keras ``Reshape``: ``(N, *target)`` in Keras' (row-major) element order."""

    def __init__(self, target: tuple[int, ...]) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape((x.shape[0], *self.target))

    def extra_repr(self) -> str:
        return f"target={self.target}"


class RepeatVector(nn.Module):
    """Keras ``RepeatVector``: ``(N, F) -> (N, n, F)``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1).expand(x.shape[0], self.n, x.shape[1])

    def extra_repr(self) -> str:
        return f"n={self.n}"


_MERGES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "multiply": torch.mul, "subtract": torch.sub, "maximum": torch.maximum, "minimum": torch.minimum,
    "add": torch.add,
}


class Merge(nn.Module):
    """Keras ``Multiply``/``Subtract``/``Average``/``Maximum``/``Minimum`` over a list of
    same-layout tensors (broadcasting size-1 axes as Keras does)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in (*_MERGES, "average"):
            raise ValueError(f"`mode` must be one of {[*_MERGES, 'average']}; received: mode={mode!r}")
        self.mode = mode

    def forward(self, inputs: list[Tensor]) -> Tensor:
        op = _MERGES["add" if self.mode == "average" else self.mode]
        total = inputs[0]
        for x in inputs[1:]:
            total = op(total, x)
        return total / len(inputs) if self.mode == "average" else total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class KerasLayerNorm(nn.Module):
    """Keras ``LayerNormalization`` over torch dims ``dims`` (biased variance, ``epsilon``
    inside the square root); ``rms_scaling`` is Keras 3's ``x * rsqrt(var + eps) * gamma``.

    ``weight``/``bias`` (Keras ``gamma``/``beta``) keep Keras' shape and are viewed into the
    torch layout through ``broadcast`` (Keras shape, size 1 off the axes) and ``perm``.
    """

    def __init__(self, dims: tuple[int, ...], shape: tuple[int, ...], broadcast: tuple[int, ...],
                 perm: tuple[int, ...], epsilon: float, center: bool, scale: bool, rms_scaling: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dims, self.broadcast, self.perm = dims, broadcast, perm
        self.epsilon, self.rms_scaling = epsilon, rms_scaling
        self.weight = nn.Parameter(torch.ones(shape, device=device)) if scale else None
        self.bias = nn.Parameter(torch.zeros(shape, device=device)) if center and not rms_scaling else None
        rank = len(perm)
        trailing = dims == tuple(range(rank - len(dims), rank))
        torch_shape = tuple(broadcast[p] for p in perm)
        self._fast = trailing and not rms_scaling and all(torch_shape[d] == 1 for d in range(rank - len(dims))) \
            and tuple(sorted(perm[d] for d in dims)) == tuple(perm[d] for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else keras_view(self.weight, self.broadcast, self.perm)
        bias = None if self.bias is None else keras_view(self.bias, self.broadcast, self.perm)
        if self._fast:
            size = x.shape[len(self.perm) - len(self.dims):]
            return nn.functional.layer_norm(x, size, None if weight is None else weight.reshape(size),
                                            None if bias is None else bias.reshape(size), self.epsilon)
        variance, mean = torch.var_mean(x, dim=self.dims, correction=0, keepdim=True)
        inv = torch.rsqrt(variance + self.epsilon)
        if self.rms_scaling:
            return x * inv if weight is None else x * inv * weight
        if weight is not None:
            inv = inv * weight
        shift = -mean * inv
        if bias is not None:
            shift = shift + bias
        return x * inv + shift

    def extra_repr(self) -> str:
        return f"dims={self.dims}, epsilon={self.epsilon}, rms_scaling={self.rms_scaling}"


class KerasPReLU(nn.Module):
    """Keras ``PReLU``: ``relu(x) - alpha * relu(-x)`` with ``alpha`` in Keras' shape
    (the input shape without batch, 1 on shared axes)."""

    def __init__(self, shape: tuple[int, ...], perm: tuple[int, ...], device: torch.device | str | None = None) -> None:
        super().__init__()
        self.perm = perm
        self.weight = nn.Parameter(torch.zeros(shape, device=device))

    def forward(self, x: Tensor) -> Tensor:
        alpha = keras_view(self.weight, (1, *self.weight.shape), self.perm)
        return torch.relu(x) - alpha * torch.relu(-x)

    def extra_repr(self) -> str:
        return f"alpha_shape={tuple(self.weight.shape)}"


class LayerScale(nn.Module):
    """ConvNeXt's ``LayerScale``: ``x * gamma`` along Keras' last axis (torch dim ``dim``)."""

    def __init__(self, channels: int, dim: int, rank: int, init_values: float = 1e-6,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.weight = nn.Parameter(torch.full((channels,), float(init_values), device=device))

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * self.rank
        shape[self.dim] = -1
        return x * self.weight.reshape(shape)

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}, dim={self.dim}"


class ScaleAdd(nn.Module):
    """InceptionResNetV2's ``CustomScaleLayer``: ``inputs[0] + inputs[1] * scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, inputs: list[Tensor]) -> Tensor:
        return inputs[0] + inputs[1] * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ThresholdedReLU(nn.Module):
    """Keras ``ThresholdedReLU``: ``x`` where ``x > theta``, else 0."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > self.theta, x, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"theta={self.theta}"


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum, "power": torch.pow,
}


class Slot(int):
    """An operand of :class:`ConstantOp` that is the module's ``n``-th tensor input (not a constant)."""


class ConstantOp(nn.Module):
    """A binary Keras/TensorFlow operation whose operands are tensors or constants.

    ``operands`` lists, per argument, a :class:`Slot` (an index into the module's tensor
    inputs) or a constant (a float, or a tensor already in the torch layout), so ``2 - x``
    and ``x - 2`` both work.  Constants take the dtype of the tensors, as in Keras.
    """

    def __init__(self, op: str, operands: Sequence[Slot | float | Tensor]) -> None:
        super().__init__()
        if op not in _BINARY or len(operands) != 2:
            raise ValueError(f"`op` must be one of {sorted(_BINARY)} with 2 operands; received: op={op!r}, "
                             f"{len(operands)} operands")
        self.op = op
        self.slots: list[int | None] = []
        self.constants: list[float | None] = []
        for index, operand in enumerate(operands):
            if isinstance(operand, Tensor):
                self.register_buffer(f"constant{index}", operand, persistent=False)
            self.slots.append(int(operand) if isinstance(operand, Slot) else None)
            self.constants.append(float(operand) if not isinstance(operand, (Slot, Tensor)) else None)

    def _operand(self, index: int, inputs: list[Tensor]) -> Tensor | float:
        slot, constant = self.slots[index], self.constants[index]
        if slot is not None:
            return inputs[slot]
        return constant if constant is not None else getattr(self, f"constant{index}")

    def forward(self, inputs: list[Tensor]) -> Tensor:
        a, b = self._operand(0, inputs), self._operand(1, inputs)
        dtype = inputs[0].dtype  # constants take the tensors' dtype, as in Keras
        if self.slots[0] is None and isinstance(a, Tensor):
            a = a.to(dtype)
        if self.slots[1] is None and isinstance(b, Tensor):
            b = b.to(dtype)
        if isinstance(a, float):  # a float constant, not "not a Tensor": torch.fx passes Proxies
            a = torch.full((), a, dtype=b.dtype, device=b.device)  # type: ignore[union-attr]
        if isinstance(b, float) and self.op in ("maximum", "minimum"):
            b = torch.full((), b, dtype=a.dtype, device=a.device)
        return _BINARY[self.op](a, b)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        parts = [f"x{s}" if s is not None else ("tensor" if c is None else repr(c))
                 for s, c in zip(self.slots, self.constants)]
        return f"op={self.op!r}, operands=[{', '.join(parts)}]"


_REDUCE: dict[str, Callable[..., Tensor]] = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax,
                                             "min": torch.amin}


class Reduce(nn.Module):
    """A reduction (``mean``, ``sum``, ``max``, ``min``) over torch dims ``dims``."""

    def __init__(self, op: str, dims: tuple[int, ...], keepdim: bool) -> None:
        super().__init__()
        if op not in _REDUCE:
            raise ValueError(f"`op` must be one of {sorted(_REDUCE)}; received: op={op!r}")
        self.op, self.dims, self.keepdim = op, dims, keepdim

    def forward(self, x: Tensor) -> Tensor:
        return _REDUCE[self.op](x, dim=self.dims, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"op={self.op!r}, dims={self.dims}, keepdim={self.keepdim}"


_SELU_ALPHA_P = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946


class TrainingNoise(nn.Module):
    """Keras' training-only noise layers, the identity at inference.

    ``gaussian_noise``: ``x + N(0, value^2)``; ``gaussian_dropout``: ``x * N(1, rate/(1-rate))``;
    ``alpha_dropout``: dropped units set to SELU's saturation value, then an affine correction
    that keeps mean and variance (Keras' formula); ``identity``: always the identity.
    """

    def __init__(self, kind: str, value: float) -> None:
        super().__init__()
        if kind not in ("identity", "gaussian_noise", "gaussian_dropout", "alpha_dropout"):
            raise ValueError(f"`kind` must be a Keras noise layer kind; received: kind={kind!r}")
        self.kind, self.value = kind, value

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.kind == "identity" or self.value == 0:
            return x
        if self.kind == "gaussian_noise":
            return x + torch.randn_like(x) * self.value
        if self.kind == "gaussian_dropout":
            return x * (1.0 + torch.randn_like(x) * (self.value / (1.0 - self.value)) ** 0.5)
        rate = self.value
        kept = (torch.rand_like(x) >= rate).to(x.dtype)
        a = ((1 - rate) * (1 + rate * _SELU_ALPHA_P ** 2)) ** -0.5
        return a * (x * kept + _SELU_ALPHA_P * (1 - kept)) - a * _SELU_ALPHA_P * rate

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, value={self.value}"
