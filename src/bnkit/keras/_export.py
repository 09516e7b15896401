"""Describe a torch ``nn.Sequential`` as a channels-last Keras functional model.

Walks the leaf modules in order, tracking the tensor shape, and emits one Keras layer per
module (a Conv2d/Linear absorbs the elementwise activation right after it, as Keras'
``activation=`` does; ``AdaptiveAvgPool2d(1)`` + flatten becomes one
``GlobalAveragePooling2D``).  Torch computes NCHW, Keras NHWC: conv kernels are permuted
by the weight table, BN axes move from dim 1 to the last axis, and a Linear fed by a
torch-order flatten of C channels gets the flatten permutation.  Anything Keras cannot
express exactly is refused with :class:`UnsupportedLayerError` naming the module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .._repr import short
from .. import constraints, initializers, regularizers
from .._spec import BNSpec
from ..layers import BatchNormalization, Dropout, Flatten, TorchBatchNorm
from ._build import moved
from ._layers import same_padding
from ._torch_bn import keras_spec
from .errors import UnsupportedLayerError

__all__ = ["Exported", "export_sequential"]

_ELEMENTWISE = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SELU: "selu", nn.Softsign: "softsign",
                nn.SiLU: "swish", nn.ReLU6: "relu6"}


@dataclass
class Exported:
    """A Keras config plus, per weighted layer, the module and its flatten channels."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    weighted: dict[str, tuple[nn.Module, int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _activation_name(module: nn.Module) -> str | None:
    """The Keras activation equal to ``module`` on a channels-first tensor, or None."""
    if isinstance(module, nn.Softmax) and module.dim == 1:  # torch channels = Keras' last axis
        return "softmax"
    if isinstance(module, nn.ELU) and module.alpha == 1.0:
        return "elu"
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.Softplus) and module.beta == 1.0:
        return "softplus"
    return next((name for kind, name in _ELEMENTWISE.items() if type(module) is kind), None)


def _refuse(path: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"Cannot write module {path!r} ({type(module).__name__}) to Keras: {why}")


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        found: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            found.extend(_leaves(child, f"{prefix}.{name}" if prefix else name))
        return found
    return [(prefix, module)]


def export_sequential(model: nn.Module, input_shape: tuple[int, ...]) -> Exported:
    """Describe ``model`` (an ``nn.Sequential``) for an NCHW (or (N, F)) input of ``input_shape``."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            "save_model writes nn.Sequential models (e.g. bnkit.models.vgg16()) and models from "
            f"bnkit.keras.load_model; received a {type(model).__name__}, whose forward cannot be read as data"
        )
    out = Exported()
    shape = tuple(input_shape)  # torch layout, no batch
    if len(shape) not in (1, 3) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"`input_shape` must be (channels, height, width) or (features,); received: {short(input_shape)}")
    keras_shape = [None, *shape[1:], shape[0]] if len(shape) == 3 else [None, *shape]
    _add(out, "input_layer", "InputLayer", {"batch_input_shape": keras_shape, "dtype": "float32", "sparse": False,
                                          "ragged": False, "name": "input_layer"}, None)
    previous, torch_order = "input_layer", 0
    leaves = [(path, m) for path, m in _leaves(model) if not isinstance(m, nn.Identity)]
    index = 0
    while index < len(leaves):
        path, module = leaves[index]
        name = path.replace(".", "_")
        following = leaves[index + 1][1] if index + 1 < len(leaves) else None
        activation = _activation_name(following) if following is not None else None
        step = 1
        if isinstance(module, (nn.Conv2d, nn.Linear)) and activation is not None:
            step = 2
        if isinstance(module, nn.Conv2d):
            shape, name = _conv(out, path, name, module, shape, previous, activation or "linear")
        elif isinstance(module, nn.Linear):
            if len(shape) != 1:
                raise _refuse(path, module, "Linear on a 4-D tensor; expected a flattened input")
            if module.in_features != shape[0]:
                raise _refuse(path, module, f"expects {module.in_features} features; receives {shape[0]}")
            _add(out, name, "Dense", {"units": module.out_features, "activation": activation or "linear",
                                      "use_bias": module.bias is not None}, previous)
            out.weighted[name] = (module, torch_order or None)
            shape, torch_order = (module.out_features,), 0
        elif isinstance(module, (BatchNormalization, nn.modules.batchnorm._BatchNorm)):
            if torch_order:
                raise _refuse(path, module, "batch norm between a torch-order flatten and a Linear")
            _add(out, name, "BatchNormalization", _bn_config(path, module, (1, *shape), out), previous)
            out.weighted[name] = (module, None)
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            shape = _pool(out, path, name, module, shape, previous)
        elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
            if len(shape) != 3 or tuple(size) not in ((1, 1), tuple(shape[1:])):
                raise _refuse(path, module, f"only global pooling (output 1x1) is expressible; output {size}")
            if tuple(size) == tuple(shape[1:]):
                index += 1
                continue  # an identity at this input size (torchvision VGG's avgpool at 224)
            flat = isinstance(following, (nn.Flatten, Flatten))
            kind = "GlobalAveragePooling2D" if isinstance(module, nn.AdaptiveAvgPool2d) else "GlobalMaxPooling2D"
            _add(out, name, kind, {"data_format": "channels_last", "keepdims": not flat}, previous)
            shape, step = ((shape[0],), 2) if flat else ((shape[0], 1, 1), 1)
        elif isinstance(module, (nn.Flatten, Flatten)):
            if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
                raise _refuse(path, module, "expected start_dim=1, end_dim=-1")
            keras_order = isinstance(module, Flatten) and module.data_format == "channels_first"
            if len(shape) == 3 and not keras_order and shape[1] * shape[2] > 1:
                torch_order = shape[0]
            _add(out, name, "Flatten", {"data_format": "channels_last"}, previous)
            shape = (math.prod(shape),)
        elif isinstance(module, (nn.Dropout, Dropout)):
            _add(out, name, "Dropout", _dropout_config(path, module, len(shape) + 1), previous)
        elif isinstance(module, nn.Softmax):
            dim = (module.dim if module.dim is not None else 1) % (len(shape) + 1)
            _add(out, name, "Softmax", {"axis": moved(len(shape) + 1)[dim]}, previous)
        elif isinstance(module, nn.ZeroPad2d) and len(shape) == 3:
            left, right, top, bottom = module.padding
            _add(out, name, "ZeroPadding2D",
                 {"padding": [[top, bottom], [left, right]], "data_format": "channels_last"}, previous)
            shape = (shape[0], shape[1] + top + bottom, shape[2] + left + right)
        elif _activation_name(module) is not None:
            _add(out, name, "Activation", {"activation": _activation_name(module)}, previous)
        else:
            raise _refuse(path, module, "no Keras layer computes the same thing")
        previous = out.layers[-1]["name"]
        index += step
    return out


def _add(out: Exported, name: str, cls: str, config: dict[str, Any], previous: str | None) -> None:
    if any(layer["name"] == name for layer in out.layers):
        raise UnsupportedLayerError(f"Cannot write two Keras layers named {name!r}; rename one of the modules")
    full = {"name": name, "trainable": True, "dtype": "float32", **config} if cls != "InputLayer" else config
    out.layers.append({"module": "keras.layers", "class_name": cls, "config": full, "registered_name": None,
                       "name": name, "inbound_nodes": [[[previous, 0, 0, {}]]] if previous else []})


def _conv(out: Exported, path: str, name: str, conv: nn.Conv2d, shape: tuple[int, ...], previous: str,
          activation: str) -> tuple[tuple[int, ...], str]:
    if len(shape) != 3 or conv.in_channels != shape[0]:
        raise _refuse(path, conv, f"expects {conv.in_channels} input channels; receives shape {shape}")
    if conv.padding_mode != "zeros":
        raise _refuse(path, conv, f"padding_mode={conv.padding_mode!r}; Keras pads with zeros only")
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    sizes = list(shape[1:])
    if isinstance(conv.padding, str):  # torch allows "same" only with stride 1, padding as TensorFlow does
        padding = conv.padding
    else:
        pads = conv.padding
        same = all(same_padding(n, k, s, d) == (p, p) for n, k, s, d, p in zip(sizes, kernel, stride, dilation, pads))
        padding = "valid" if all(p == 0 for p in pads) else "same" if same else "valid"
        if not same and any(pads):
            _add(out, f"{name}_pad", "ZeroPadding2D", {"padding": [[pads[0], pads[0]], [pads[1], pads[1]]],
                                                       "data_format": "channels_last"}, previous)
            previous = f"{name}_pad"
            sizes = [n + 2 * p for n, p in zip(sizes, pads)]
    _add(out, name, "Conv2D", {
        "filters": conv.out_channels, "kernel_size": list(kernel), "strides": list(stride), "padding": padding,
        "data_format": "channels_last", "dilation_rate": list(dilation), "groups": conv.groups,
        "activation": activation, "use_bias": conv.bias is not None}, previous)
    out.weighted[name] = (conv, None)
    spatial = tuple(-(-n // s) if padding == "same" else (n - d * (k - 1) - 1) // s + 1
                    for n, k, s, d in zip(sizes, kernel, stride, dilation))
    return (conv.out_channels, *spatial), name


def _pool(out: Exported, path: str, name: str, pool: nn.Module, shape: tuple[int, ...],
          previous: str) -> tuple[int, ...]:
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]

    kernel, stride = pair(pool.kernel_size), pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if len(shape) != 3 or pair(pool.padding) != (0, 0) or pool.ceil_mode or \
            getattr(pool, "dilation", 1) not in (1, (1, 1)) or getattr(pool, "divisor_override", None) is not None:
        raise _refuse(path, pool, "expected a 4-D input, no padding, ceil_mode=False, dilation 1")
    kind = "MaxPooling2D" if isinstance(pool, nn.MaxPool2d) else "AveragePooling2D"
    _add(out, name, kind, {"pool_size": list(kernel), "padding": "valid", "strides": list(stride),
                           "data_format": "channels_last"}, previous)
    return (shape[0],) + tuple((n - k) // s + 1 for n, k, s in zip(shape[1:], kernel, stride))


def _bn_config(path: str, bn: nn.Module, shape: tuple[int, ...], out: Exported) -> dict[str, Any]:
    """The Keras config of a bnkit or torch BN on an NC... input of ``shape`` (batch included)."""
    keras_family = isinstance(bn, BatchNormalization)
    if not keras_family and (bn.momentum is None or not bn.track_running_stats):
        raise _refuse(path, bn, "momentum=None or track_running_stats=False have no Keras equivalent")
    spec, rank = bn.spec if keras_family else keras_spec(bn), len(shape)
    try:
        built = spec.build(shape)
    except ValueError as error:
        raise _refuse(path, bn, f"it cannot normalise a {rank}-D input ({error})") from error
    keras_axes = [moved(rank)[a] for a in built.axes]
    if keras_axes != sorted(keras_axes) or spec.adjustment is not None:
        raise _refuse(path, bn, "an adjustment, or axes whose order changes in channels-last layout")
    config: dict[str, Any] = {**spec.keras_config(), "axis": keras_axes[0] if len(keras_axes) == 1 else [
        a - rank for a in keras_axes] if spec.virtual_batch_size is not None else keras_axes}
    if keras_family:
        config.update(trainable=bn.trainable, **{f"{k}_initializer": initializers.serialize(v)
                                                 for k, v in bn.initializers.items()})
    if isinstance(bn, (BatchNormalization, TorchBatchNorm)):  # the torch family writes only those it has
        penalties = {**{f"{k}_regularizer": regularizers.serialize(v) for k, v in bn.regularizers.items()},
                     **{f"{k}_constraint": constraints.serialize(v) for k, v in bn.constraints.items()}}
        config.update({k: v for k, v in penalties.items() if keras_family or v is not None})
    try:  # the rule Keras picks for the config (save_model's re-plan reports an invalid config)
        keras_rule = BNSpec.from_keras_config(config).build((1,) * rank).variance_rule
    except (ValueError, TypeError):
        keras_rule = built.variance_rule
    if keras_rule != built.variance_rule:
        out.notes.append(f"{path}: fused={bn.fused} is not saved by Keras; Keras picks its own moving-variance rule"
                         if keras_family else f"{path}: Keras feeds the biased batch variance to moving_variance "
                         "here (torch: unbiased)")
    return config


def _dropout_config(path: str, drop: nn.Module, rank: int) -> dict[str, Any]:
    if isinstance(drop, Dropout):
        noise = None
        if drop.noise_shape is not None:
            perm = moved(rank)
            noise = [drop.noise_shape[perm.index(d)] for d in range(rank)]
        return {"rate": drop.rate, "noise_shape": noise, "seed": drop.seed}
    return {"rate": float(drop.p), "noise_shape": None, "seed": None}  # type: ignore[arg-type]
