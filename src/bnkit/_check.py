"""Validation of user arguments, with one message format.

Every message says what is wrong, what was expected and what was received, with the
argument in backticks: ``"`momentum` must be a number between 0 and 1; received:
momentum=1.5"``.  Type problems raise ``TypeError``, bad values ``ValueError``.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor
from ._repr import short


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_axis(axis: Any) -> int | tuple[int, ...]:
    """An int or a non-empty list/tuple of ints (returned as a tuple)."""
    if isinstance(axis, (list, tuple)) and axis and all(is_int(a) for a in axis):
        return tuple(int(a) for a in axis)
    if is_int(axis):
        return int(axis)
    raise TypeError(
        "Expected an int or a list/tuple of ints for the argument 'axis', "
        f"but received: {short(axis)}"
    )


def check_fraction(name: str, value: Any) -> float:
    """A number in [0, 1] (momentum-like arguments)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number between 0 and 1; received: {name}={short(value)}")
    return float(value)


def check_positive(name: str, value: Any, kind: type = float) -> Any:
    """A positive finite float, or a positive int with ``kind=int``."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and is_int(value)
    if not ok or (kind is float and not math.isfinite(float(value))):
        expected = "a positive integer" if kind is int else "a positive finite number"
        raise ValueError(f"`{name}` must be {expected}; received: {name}={short(value)}")
    return kind(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; received: {name}={short(value)}")
    return value


# ---- tensors given to the functional core ----------------------------------------------
def check_sizes(x: Tensor, axes: list[int], **tensors: Tensor | None) -> None:
    features = math.prod([x.shape[a] for a in axes])
    for name, t in tensors.items():
        if t is not None and t.numel() != features:
            raise ValueError(f"`{name}` must hold one value per feature ({features} for axes {axes} of an input "
                             f"of shape {tuple(x.shape)}); received {t.numel()} values")


def check_torch_arguments(
    x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None,
    bias: Tensor | None, training: bool, eps: float,
) -> None:
    """``torch.nn.functional.batch_norm``'s checks, with its exception types and messages."""
    if not x.is_floating_point():
        raise NotImplementedError(f'"batch_norm" not implemented for {str(x.dtype).replace("torch.", "")!r}')
    size = x.shape
    if training and x.dim() >= 1 and size[0] * math.prod(size[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("running_mean and running_var must be defined in evaluation mode")
    if x.dim() < 2 and x.numel() == 0:
        return
    channels = size[1] if x.dim() > 1 else 0
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")


_TINY32 = float(torch.finfo(torch.float32).tiny)
_TINY64 = float(torch.finfo(torch.float64).tiny)


def epsilon_floor(dtype: torch.dtype | None) -> float:
    """The smallest ``epsilon`` that survives in arithmetic of ``dtype``.

    float16/bfloat16 layers compute in float32 inside, so their floor is float32's: the
    smallest normal float32 (1.18e-38).  float64 layers may go down to float64's.
    """
    return _TINY64 if dtype == torch.float64 else _TINY32


def check_epsilon(name: str, value: Any, dtype: torch.dtype | None = None, *, zero_ok: bool = False) -> float:
    """A finite ``epsilon`` that does not vanish in the layer's arithmetic (``zero_ok``: 0 is allowed too)."""
    if zero_ok and isinstance(value, Real) and not isinstance(value, bool) and value == 0:
        return 0.0
    value = check_positive(name, value)
    floor = epsilon_floor(dtype)
    if value < floor:
        kind = "float64" if floor < 1e-300 else "float32"
        raise ValueError(
            f"`{name}` must be at least {floor:.6g}, the smallest normal {kind} number: a smaller one "
            f"vanishes when added to a variance in {kind} (a constant channel would then divide by zero); "
            f"received: {name}={value!r}"
        )
    return value


def check_input_dtype(x: Tensor, *tensors: Tensor | None) -> None:
    """Refuse inputs batch normalization would silently get wrong or fail on deep in torch.

    Complex inputs would lose their imaginary part; a float64 input with float32 (or lower)
    parameters and statistics, or the reverse, is what ``torch.nn.BatchNorm*`` refuses with
    "mixed dtype": say which dtypes differ and what to call.
    """
    if x.is_complex():
        raise TypeError(
            f"Batch normalization expects a real (floating-point) input; received an input of dtype "
            f"{str(x.dtype).replace('torch.', '')}, whose imaginary part would be lost (pass x.real, x.abs() "
            "or torch.view_as_real(x))"
        )
    if not x.is_floating_point():
        return
    present = [t for t in tensors if t is not None]
    wide = any(t.dtype == torch.float64 for t in present)
    narrow = [t.dtype for t in present if t.dtype != torch.float64]
    if x.dtype == torch.float64 and narrow:
        held = str(narrow[0]).replace("torch.", "")
        raise TypeError(
            f"Batch normalization input and layer dtypes differ: expected an input of the layer's dtype "
            f"({held}; float16/bfloat16 inputs are also accepted with float32 layers); received a float64 "
            f"input. Call layer.double() to compute in float64, or pass x.to(torch.{held})"
        )
    if x.dtype != torch.float64 and wide:
        raise TypeError(
            f"Batch normalization input and layer dtypes differ: expected a float64 input for a float64 "
            f"layer; received a {str(x.dtype).replace('torch.', '')} input. Pass x.double(), or call "
            "layer.float() to compute in float32"
        )
