"""Weight constraints mirroring ``tf.keras.constraints`` (tf_keras 2.21), in pure PyTorch.

:func:`get` resolves what Keras accepts (None, names, config dicts, instances, callables)
to a :class:`Constraint` (or None): ``con(weight) -> tensor``, a *new* tensor the caller
copies into the parameter (typically right after the optimizer step).

With ``norms = sqrt(sum(w ** 2, axis, keepdims=True))`` and ``eps = 1e-7`` (Keras'
``backend.epsilon()``), the formulas are exactly Keras':

- ``NonNeg``: ``w * (w >= 0)`` (so ``-inf`` and NaN become NaN, and ``-0.0`` stays);
- ``UnitNorm``: ``w / (eps + norms)``;
- ``MaxNorm``: ``w * (clip(norms, 0, max_value) / (eps + norms))``;
- ``MinMaxNorm``: ``w * ((rate * clip(norms, min_value, max_value) + (1 - rate) * norms) / (eps + norms))``.

``clip`` is Keras' ``backend.clip``: an upper bound below the lower one is raised to it.
``axis`` is an int or a list of ints (negative values count from the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._repr import short
from ._registry import KerasObject, Registry, UserCallable, check_number

__all__ = ["EPSILON", "Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "get", "serialize"]

EPSILON = 1e-7
Axis = int | Sequence[int]


def _check_axis(axis: Axis) -> Axis:
    def is_int(a: Any) -> bool:
        return isinstance(a, int) and not isinstance(a, bool)

    if is_int(axis) or (isinstance(axis, (list, tuple)) and len(axis) > 0 and all(is_int(a) for a in axis)):
        return axis
    raise ValueError(f"Invalid `axis`: expected an int or a non-empty list of ints; received: axis={short(axis)}.")


def _norms(w: torch.Tensor, axis: Axis) -> torch.Tensor:
    """``sqrt(sum(w ** 2))`` over ``axis``, dimensions kept."""
    dims = [axis] if isinstance(axis, int) else list(axis)
    rank = max(w.dim(), 1)
    if any(not -rank <= d < rank for d in dims):
        raise ValueError(
            f"Invalid `axis` for a weight of shape {tuple(w.shape)}: expected values in "
            f"[{-rank}, {rank - 1}]; received: axis={short(axis)}."
        )
    return torch.sqrt(torch.sum(torch.square(w), dim=dims, keepdim=True))


def _clip(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Keras' ``backend.clip``: ``high`` is raised to ``low`` when below it."""
    return torch.clamp(x, low, max(low, high))


class Constraint(KerasObject):
    """Base class: ``con(weight)`` returns the projected weight (the identity here)."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w


class NonNeg(Constraint):
    """Zero the negative entries: ``w * (w >= 0)``."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w * (w >= 0).to(w.dtype)


class UnitNorm(Constraint):
    """Scale to unit norm along ``axis``: ``w / (eps + norms)``."""
    _config_keys = ("axis",)

    def __init__(self, axis: Axis = 0) -> None:
        self.axis = _check_axis(axis)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w / (EPSILON + _norms(w, self.axis))


class MaxNorm(Constraint):
    """Rescale slices whose norm along ``axis`` exceeds ``max_value`` down to it."""
    _config_keys = ("max_value", "axis")

    def __init__(self, max_value: float = 2, axis: Axis = 0) -> None:
        self.max_value, self.axis = check_number(max_value, "max_value"), _check_axis(axis)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        norms = _norms(w, self.axis)
        return w * (_clip(norms, 0, self.max_value) / (EPSILON + norms))


class MinMaxNorm(Constraint):
    """Move the norms along ``axis`` into ``[min_value, max_value]``, at speed ``rate`` (1: at once)."""
    _config_keys = ("min_value", "max_value", "rate", "axis")

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis: Axis = 0) -> None:
        self.min_value, self.max_value = check_number(min_value, "min_value"), check_number(max_value, "max_value")
        self.rate, self.axis = check_number(rate, "rate"), _check_axis(axis)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        norms = _norms(w, self.axis)
        desired = self.rate * _clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (EPSILON + norms))


class _CallableConstraint(UserCallable, Constraint):
    """A user callable ``fn(weight)``; its result must be a tensor of the weight's shape."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        result = self.fn(w)
        if not isinstance(result, torch.Tensor) or result.shape != w.shape:
            self._fail(result, f"a torch.Tensor of shape {tuple(w.shape)}")
        return result


_NAMES: dict[str, type[Constraint]] = {  # class names, snake_case names and tf_keras' legacy aliases
    "NonNeg": NonNeg, "non_neg": NonNeg, "nonneg": NonNeg, "UnitNorm": UnitNorm, "unit_norm": UnitNorm,
    "unitnorm": UnitNorm, "MaxNorm": MaxNorm, "max_norm": MaxNorm, "maxnorm": MaxNorm,
    "MinMaxNorm": MinMaxNorm, "min_max_norm": MinMaxNorm,
}

_REGISTRY: Registry[Constraint] = Registry(
    "constraint", "keras.constraints", Constraint, _NAMES,
    ["max_norm", "min_max_norm", "non_neg", "unit_norm"], _CallableConstraint,
)


def get(identifier: Any, *, arg_name: str = "identifier") -> Constraint | None:
    """Resolve a Keras constraint identifier; None gives None.

    ``arg_name`` names the argument in error messages (e.g. ``"gamma_constraint"``).
    """
    return None if identifier is None else _REGISTRY.get(identifier, arg_name)


def serialize(constraint: Constraint | None) -> dict[str, Any] | None:
    """The Keras serialisation ``{"module", "class_name", "config", "registered_name"}``."""
    return _REGISTRY.serialize(constraint)
