"""VGG16 / VGG19 as in Keras applications, layer for layer, with optional batch norm.

The architecture is data (:data:`CONFIGS`); one builder turns it into an ``nn.Sequential``
whose module names are Keras' layer names (``block1_conv1`` ... ``block5_pool``,
``flatten``, ``fc1``, ``fc2``, ``predictions``), so Keras weights load by name.  Keras
puts the activation inside Conv2D/Dense; here it is a separate module named
``<layer>_relu``.  Batch norm, when asked for, is ``<layer>_bn``, before or after the
activation (Simonyan & Zisserman's VGG has none; torchvision's ``vgg16_bn`` puts it
between each conv and its ReLU).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from torch import nn

from .._repr import short
from ..layers import BatchNormalization, Flatten

__all__ = ["CONFIGS", "PLACEMENTS", "vgg", "vgg16", "vgg19"]

#: Convolutions per block; every block ends in a 2x2 max pool.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}
PLACEMENTS = (None, "before_activation", "after_activation")
_ACTIVATIONS = {"softmax": lambda: nn.Softmax(dim=1), "sigmoid": nn.Sigmoid, "linear": None, None: None}


def vgg16(**kwargs: Any) -> nn.Sequential:
    """Keras' VGG16 (138,357,544 parameters with the defaults). See :func:`vgg` for options."""
    return vgg("vgg16", **kwargs)


def vgg19(**kwargs: Any) -> nn.Sequential:
    """Keras' VGG19 (143,667,240 parameters with the defaults). See :func:`vgg` for options."""
    return vgg("vgg19", **kwargs)


def vgg(
    arch: str,
    *,
    include_top: bool = True,
    input_shape: Sequence[int] = (3, 224, 224),
    classes: int = 1000,
    pooling: str | None = None,
    batch_norm: str | None = None,
    batch_norm_dense: bool = False,
    dropout: float = 0.0,
    width: float = 1.0,
    fc_units: int = 4096,
    classifier_activation: str | None = "softmax",
    bn_kwargs: dict[str, Any] | None = None,
) -> nn.Sequential:
    """Build a VGG network from :data:`CONFIGS`.

    Args:
        arch: ``"vgg16"`` or ``"vgg19"``.
        include_top: add ``flatten``, ``fc1``, ``fc2`` and ``predictions``.
        input_shape: ``(channels, height, width)``, height and width at least 32 (Keras' minimum).
        classes: outputs of ``predictions``.
        pooling: without the top, ``None``, ``"avg"`` or ``"max"`` global pooling.
        batch_norm: ``None``, ``"before_activation"`` or ``"after_activation"``: a
            :class:`~bnkit.BatchNormalization` for every conv layer.
        batch_norm_dense: also put batch norm on ``fc1`` and ``fc2``.
        dropout: dropout rate after ``fc1`` and ``fc2`` (Keras has none; torchvision 0.5).
        width: channel multiplier for the conv layers (and ``fc_units``), for small experiments.
        fc_units: units of ``fc1``/``fc2`` before ``width`` is applied.
        classifier_activation: ``"softmax"``, ``"sigmoid"``, or ``None``/``"linear"`` for logits.
        bn_kwargs: extra arguments for every BatchNormalization (Keras names: ``momentum``...).
    """
    if arch not in CONFIGS:
        raise ValueError(f"`arch` must be one of {sorted(CONFIGS)}; received: {short(arch)}")
    if batch_norm not in PLACEMENTS:
        raise ValueError(f"`batch_norm` must be one of {PLACEMENTS}; received: batch_norm={short(batch_norm)}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max'; received: pooling={short(pooling)}")
    if classifier_activation not in _ACTIVATIONS:
        raise ValueError("`classifier_activation` must be 'softmax', 'sigmoid', 'linear' or None; "
                         f"received: {short(classifier_activation)}")
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"`width` must be a positive number; received: width={short(width)}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"`dropout` must be in [0, 1); received: dropout={short(dropout)}")
    channels, height, wide = _check_input_shape(input_shape)
    bn_kwargs = dict(bn_kwargs or {})
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for b, block in enumerate(CONFIGS[arch], start=1):
        for i, filters in enumerate(block, start=1):
            out = max(1, round(filters * width))
            name = f"block{b}_conv{i}"
            layers[name] = nn.Conv2d(channels, out, 3, padding=1)
            _activation_and_bn(layers, name, out, batch_norm, bn_kwargs)
            channels = out
        layers[f"block{b}_pool"] = nn.MaxPool2d(2)
    if include_top:
        layers["flatten"] = Flatten(data_format="channels_first")  # Keras (h, w, c) order
        features = channels * (height // 32) * (wide // 32)
        units = max(1, round(fc_units * width))
        for name in ("fc1", "fc2"):
            layers[name] = nn.Linear(features, units)
            _activation_and_bn(layers, name, units, batch_norm if batch_norm_dense else None, bn_kwargs)
            if dropout:
                layers[f"{name}_dropout"] = nn.Dropout(dropout)
            features = units
        layers["predictions"] = nn.Linear(features, classes)
        head = _ACTIVATIONS[classifier_activation]
        if head is not None:
            layers[f"predictions_{classifier_activation}"] = head()
    elif pooling is not None:
        layers[f"{pooling}_pool"] = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        layers["pool_flatten"] = nn.Flatten(1)
    return nn.Sequential(layers)


def _activation_and_bn(
    layers: OrderedDict[str, nn.Module], name: str, features: int, placement: str | None,
    bn_kwargs: dict[str, Any],
) -> None:
    def bn() -> None:
        layers[f"{name}_bn"] = BatchNormalization(axis=1, num_features=features, **bn_kwargs)

    if placement == "before_activation":
        bn()
    layers[f"{name}_relu"] = nn.ReLU()
    if placement == "after_activation":
        bn()


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"`input_shape` must be (channels, height, width) of positive ints; received: {short(input_shape)}"
        )
    if shape[1] < 32 or shape[2] < 32:
        raise ValueError(
            "`input_shape` height and width must be at least 32 (five 2x2 poolings); "
            f"received: {short(input_shape)}"
        )
    return shape  # type: ignore[return-value]
