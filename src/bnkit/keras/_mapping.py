"""The Keras <-> torch weight table: every weight name, attribute and layout change, once.

========================  ==========  =========  ======================================
Keras layer / weight      torch type  attribute  layout change (Keras -> torch)
========================  ==========  =========  ======================================
Conv2D ``kernel``         Conv2d      weight     HWIO -> OIHW, ``transpose(3, 2, 0, 1)``
Conv2D ``bias``           Conv2d      bias       none
Dense ``kernel``          Linear      weight     ``(in, out) -> (out, in)``, ``.T``; after a
                                                 torch-order flatten of C channels:
                                                 ``K.reshape(HW, C, U).transpose(2, 1, 0)``
Dense ``bias``            Linear      bias       none
BatchNormalization        bnkit BN or weight,    flat ``(C,)``; Keras stores ``(1, ..., C)``
``gamma`` ... (7 names)   BatchNormNd bias, ...  with ``virtual_batch_size`` or several axes
========================  ==========  =========  ======================================

The BN names come from :data:`bnkit.layers.batch_norm.KERAS_WEIGHT_NAMES` (gamma -> weight,
beta -> bias, moving_mean -> running_mean, moving_variance -> running_var, moving_stddev ->
running_stddev, renorm_mean, renorm_stddev).  Each rule maps a torch tensor to a *view* in
Keras' layout, so one function serves loading (copy into the view) and saving (read it).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from ..layers.batch_norm import KERAS_WEIGHT_NAMES, BatchNormalization

__all__ = ["KERAS_ALIASES", "RULES", "WeightRule", "keras_class", "present_rules", "short_name", "snake_case"]


def _conv_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    return tensor.permute(2, 3, 1, 0)  # OIHW -> HWIO; the inverse of transpose(3, 2, 0, 1)


def _dense_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    if channels is None:
        return tensor.T
    units, features = tensor.shape
    # torch flattens NCHW as (c, hw); Keras as (hw, c): view (U, C, HW) as (HW, C, U).
    return tensor.view(units, channels, features // channels).permute(2, 1, 0)


def _as_is(tensor: Tensor, channels: int | None) -> Tensor:
    return tensor


def _dense_shape(tensor: Tensor) -> tuple[int, ...]:
    return (tensor.shape[1], tensor.shape[0])


def _view_shape(view: Callable[[Tensor, int | None], Tensor]) -> Callable[[Tensor], tuple[int, ...]]:
    return lambda tensor: tuple(view(tensor, None).shape)


@dataclass(frozen=True)
class WeightRule:
    """One Keras weight of a layer class and where it lives on the torch module."""

    keras: str
    torch: str
    view: Callable[[Tensor, int | None], Tensor]
    keras_shape: Callable[[Tensor], tuple[int, ...]]
    exact_shape: bool = True


#: Keras class -> its weights in Keras' order (trainable first, then non-trainable).
RULES: dict[str, tuple[WeightRule, ...]] = {
    "Conv2D": (
        WeightRule("kernel", "weight", _conv_kernel, _view_shape(_conv_kernel)),
        WeightRule("bias", "bias", _as_is, _view_shape(_as_is)),
    ),
    "Dense": (
        WeightRule("kernel", "weight", _dense_kernel, _dense_shape),
        WeightRule("bias", "bias", _as_is, _view_shape(_as_is)),
    ),
    "BatchNormalization": tuple(
        WeightRule(keras, attribute, _as_is, _view_shape(_as_is), exact_shape=False)
        for keras, attribute in KERAS_WEIGHT_NAMES.items()
    ),
}

#: torch module type -> Keras class, most specific first.
_CLASSES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv2d, "Conv2D"),
    (nn.Linear, "Dense"),
    (BatchNormalization, "BatchNormalization"),
    (nn.modules.batchnorm._BatchNorm, "BatchNormalization"),
)

#: Weight names of older files -> today's Keras names (Keras 1: ``W``, ``b``, ``running_*``).
KERAS_ALIASES = {"W": "kernel", "b": "bias", "running_mean": "moving_mean", "running_std": "moving_variance"}


def keras_class(module: nn.Module) -> str | None:
    """The Keras class a torch module stands for, or None when it has no Keras weights."""
    for kind, name in _CLASSES:
        if isinstance(module, kind):
            return name
    return None


def present_rules(module: nn.Module, class_name: str) -> list[WeightRule]:
    """The rules whose tensor exists on ``module`` (no bias, scale=False... drop out)."""
    return [rule for rule in RULES[class_name] if getattr(module, rule.torch, None) is not None]


def short_name(stored: str, layer: str | None) -> str:
    """The Keras weight name in a stored name: ``c1/kernel:0`` -> ``kernel``,
    ``block1_conv1_W_1:0`` -> ``kernel``, ``outer/bn/gamma`` -> ``gamma``."""
    base = re.sub(r":\d+$", "", stored.split("/")[-1])
    if layer and base.startswith(layer + "_") and base != layer:
        base = base[len(layer) + 1:]
    base = re.sub(r"_\d+$", "", base)
    return KERAS_ALIASES.get(base, base)


def snake_case(class_name: str) -> str:
    """Keras' snake_case of a class name, used for ``.keras`` weight paths: ``Conv2D`` ->
    ``conv2d``, ``BatchNormalization`` -> ``batch_normalization``."""
    text = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", text).lower()
