"""Validation of BatchNormalization's arguments, with tf.keras' rules and messages.

Kept apart from the layer so the class reads as a recipe.  Checks happen as early as the
information allows: at construction for the arguments alone, at the first call (``build``)
for whatever depends on the input's rank and shape.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping, Sequence

import torch

from .._kernels import normalize_axes

_FUSED_AXES = (-4, -3, -1, 1, 3, 4)  # tf.keras' construction-time allow-list
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def check_axis(axis: Any) -> int | list[int]:
    if isinstance(axis, (list, tuple)) and axis and all(_is_int(a) for a in axis):
        return [int(a) for a in axis]
    if _is_int(axis):
        return int(axis)
    raise TypeError(
        "Expected an int or a list/tuple of ints for the argument 'axis', "
        f"but received: {axis!r}"
    )


def check_fraction(name: str, value: Any) -> float:
    """A number in [0, 1] (momentum-like arguments)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number between 0 and 1; received: {name}={value!r}")
    return float(value)


def check_positive(name: str, value: Any, kind: type = float) -> Any:
    ok = isinstance(value, Real) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and _is_int(value)
    if not ok or (kind is float and not math.isfinite(float(value))):
        expected = "a positive integer" if kind is int else "a positive finite number"
        raise ValueError(f"`{name}` must be {expected}; received: {name}={value!r}")
    return kind(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; received: {name}={value!r}")
    return value


def check_clipping(clipping: Mapping[str, Any] | None, renorm: bool) -> dict[str, float]:
    """tf.keras checks the keys only with renorm=True; values are checked as in Keras 3."""
    if clipping is None:
        return {}
    if not isinstance(clipping, Mapping):
        raise TypeError(f"`renorm_clipping` must be a dict or None; received: {clipping!r}")
    if not renorm:
        return dict(clipping)
    unknown = set(clipping) - set(_CLIPPING_KEYS)
    if unknown:
        raise ValueError(
            f"Received invalid keys for `renorm_clipping` argument: {unknown}. "
            f"Supported values: {list(_CLIPPING_KEYS)}."
        )
    values: dict[str, float] = {}
    for key, value in clipping.items():
        if value is None:
            continue
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"`renorm_clipping[{key!r}]` must be a number or None; received: {value!r}")
        values[key] = float(value)
    rmin, rmax, dmax = (values.get(k) for k in ("rmin", "rmax", "dmax"))
    if rmin is not None and rmax is not None and rmax < rmin:
        raise ValueError(
            f"`renorm_clipping` needs rmax >= rmin; received: rmax={rmax}, rmin={rmin}"
        )
    if dmax is not None and dmax < 0:
        raise ValueError(f"`renorm_clipping` needs dmax >= 0; received: dmax={dmax}")
    return values


def resolve_fused_at_init(
    fused: Any, axis: int | list[int], renorm: bool, virtual_batch_size: int | None,
    adjustment: Any, dtype: torch.dtype, synchronized: bool,
) -> bool | None:
    """tf.keras' construction-time rules: ``None`` may become False, ``True`` may raise."""
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"`fused` must be None, True or False; received: fused={fused!r}")
    if synchronized:
        if fused:
            raise ValueError("`fused=True` is not supported when `synchronized=True`.")
        return False
    axes = axis if isinstance(axis, list) else [axis]
    reasons = [
        (renorm, "Passing both `fused=True` and `renorm=True` is not supported"),
        (
            len(axes) > 1 or axes[0] not in _FUSED_AXES,
            "Passing `fused=True` is only supported when axis is 1 or 3 for input rank = 4 "
            f"or 1 or 4 for input rank = 5. Got axis {axes}",
        ),
        (
            virtual_batch_size is not None,
            "Passing `fused=True` is not supported when `virtual_batch_size` is specified. "
            f"Received: virtual_batch_size={virtual_batch_size}",
        ),
        (
            adjustment is not None,
            "Passing `fused=True` is not supported when `adjustment` is specified.",
        ),
        (
            dtype not in _FUSED_DTYPES,
            "Passing `fused=True` is only supported when the compute dtype is float16, "
            f"bfloat16, or float32. Got dtype: {str(dtype).replace('torch.', '')}",
        ),
    ]
    for failed, message in reasons:
        if failed:
            if fused:
                raise ValueError(message)
            return False
    return fused


def resolve_fused_at_build(fused: bool | None, axes: list[int], ndim: int, shape: Sequence[int]) -> bool:
    """tf.keras' build-time rules (rank 4/5 and the data-format axis)."""
    if fused is False:
        return False
    if ndim not in (4, 5):
        if fused:
            raise ValueError(
                "Batch normalization layers with `fused=True` only support 4D or 5D input "
                f"tensors. Received tensor with shape: {tuple(shape)}"
            )
        return False
    if axes in ([1], [ndim - 1]):
        return True
    if ndim == 4:
        raise ValueError(
            "Unsupported axis. The use of `fused=True` is only possible with `axis=1` or "
            f"`axis=3` for 4D input tensors. Received: axis={tuple(axes)}"
        )
    return False


def build_axes(axis: int | list[int], ndim: int, virtual_batch_size: int | None) -> list[int]:
    if ndim == 0:
        raise ValueError("Input has undefined rank. Received: input_shape=() (a scalar)")
    axes = normalize_axes(axis, ndim)
    if virtual_batch_size is not None and 0 in axes:
        raise ValueError(
            "When using `virtual_batch_size`, the batch dimension must be 0 and thus axis "
            f"cannot include 0. Received axis={axis}"
        )
    return axes


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
