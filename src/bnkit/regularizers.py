"""Weight regularizers mirroring ``tf.keras.regularizers`` (tf_keras 2.21), in pure PyTorch.

:func:`get` resolves what Keras accepts (None, names, config dicts, instances, callables)
to a :class:`Regularizer` (or None): ``reg(weight) -> scalar tensor``, the penalty Keras
adds to ``layer.losses``. Formulas are Keras': ``L1 = l1 * sum(|x|)``,
``L2 = l2 * sum(x ** 2)`` (no 1/2) and ``L1L2`` their sum, a term being skipped when its
coefficient is 0. Unlike Keras, negative coefficients are rejected.

Names: ``"l1"`` is ``L1(0.01)``, ``"l2"`` is ``L2(0.01)``, ``"l1_l2"`` is
``L1L2(l1=0.01, l2=0.01)``; the class names build the classes with their defaults, so
``"L1L2"`` is ``L1L2(l1=0.0, l2=0.0)``, as in Keras.
"""

from __future__ import annotations

from typing import Any

import torch

from ._registry import KerasObject, Registry, UserCallable, check_number

__all__ = ["L1", "L1L2", "L2", "Regularizer", "get", "l1_l2", "serialize"]


def _coefficient(value: float | None, name: str, default: float) -> float:
    """Keras' reading of a penalty coefficient: None means the default; stored as a float."""
    return float(check_number(default if value is None else value, name, non_negative=True))


class Regularizer(KerasObject):
    """Base class: ``reg(weight)`` returns the scalar penalty for ``weight``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())


class L1L2(Regularizer):
    """``l1 * sum(|x|) + l2 * sum(x ** 2)``."""
    _config_keys = ("l1", "l2")

    def __init__(self, l1: float | None = 0.0, l2: float | None = 0.0) -> None:
        self.l1, self.l2 = _coefficient(l1, "l1", 0.0), _coefficient(l2, "l2", 0.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        penalty = x.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * torch.sum(torch.abs(x))
        if self.l2:
            penalty = penalty + self.l2 * torch.sum(torch.square(x))
        return penalty


class L1(Regularizer):
    """``l1 * sum(|x|)``."""
    _config_keys = ("l1",)

    def __init__(self, l1: float | None = 0.01) -> None:
        self.l1 = _coefficient(l1, "l1", 0.01)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.l1 * torch.sum(torch.abs(x))


class L2(Regularizer):
    """``l2 * sum(x ** 2)`` (Keras' ``2 * l2 * tf.nn.l2_loss(x)``)."""
    _config_keys = ("l2",)

    def __init__(self, l2: float | None = 0.01) -> None:
        self.l2 = _coefficient(l2, "l2", 0.01)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2 * torch.sum(torch.square(x))


def l1_l2(l1: float | None = 0.01, l2: float | None = 0.01) -> L1L2:
    """``L1L2`` with Keras' shortcut defaults ``l1=0.01, l2=0.01``."""
    return L1L2(l1=l1, l2=l2)


class _CallableRegularizer(UserCallable, Regularizer):
    """A user callable ``fn(weight)``; its result must be a scalar (0-d) tensor."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result = self.fn(x)
        if not isinstance(result, torch.Tensor) or result.dim() != 0:
            self._fail(result, "a scalar (0-d) torch.Tensor")
        return result


_REGISTRY: Registry[Regularizer] = Registry(
    "regularizer",
    "keras.regularizers",
    Regularizer,
    {"l1": L1, "l2": L2, "l1_l2": l1_l2, "L1": L1, "L2": L2, "L1L2": L1L2},
    ["l1", "l2", "l1_l2"],
    _CallableRegularizer,
)


def get(identifier: Any, *, arg_name: str = "identifier") -> Regularizer | None:
    """Resolve a Keras regularizer identifier; None gives None.

    ``arg_name`` names the argument in error messages (e.g. ``"gamma_regularizer"``).
    """
    return None if identifier is None else _REGISTRY.get(identifier, arg_name)


def serialize(regularizer: Regularizer | None) -> dict[str, Any] | None:
    """The Keras serialisation ``{"module", "class_name", "config", "registered_name"}``."""
    return _REGISTRY.serialize(regularizer)
