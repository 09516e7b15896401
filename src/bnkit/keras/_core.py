"""Core Keras layers: InputLayer, Conv2D, Dense, Flatten, Dropout.

Each entry plans the layer from its config (output: its Keras tensor and the config bnkit
writes back, tf_keras-style, read by both tf_keras 2.x and Keras 3), names its weights,
and exports the matching plain torch module.
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..layers import Dropout, Flatten
from ._build import Builder, Info, identity, image, inverse, layout, moved, spatial, weighted
from ._config import INTEGER_INPUTS, LayerSpec, dtype_name
from ._entry import (ExportState, LayerEntry, WeightRule, as_is, conv_kernel, dense_kernel, dense_shape,
                     view_shape)
from ._layers import KERAS3_POLICY, SamePad2d, keras3_dialect, same_padding
from ._options import (activation_name, activation_of, bool_option, choice, common, data_format, float_option,
                       initializer, int_option, is_int, known, one_input, pair, training_only)

__all__ = ["CONV2D_WEIGHTS", "DENSE_WEIGHTS", "ENTRIES"]

CONV2D_WEIGHTS = (WeightRule("kernel", "weight", conv_kernel, view_shape(conv_kernel)),
                  WeightRule("bias", "bias", as_is, view_shape(as_is)))
DENSE_WEIGHTS = (WeightRule("kernel", "weight", dense_kernel, dense_shape),
                 WeightRule("bias", "bias", as_is, view_shape(as_is)))


def input_layer(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    cfg = spec.config
    shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
    if shape is None and isinstance(cfg.get("input_shape"), list):
        shape = [None] + cfg["input_shape"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= 6 or \
            not all(d is None or (is_int(d) and 0 < d < 2**31) for d in shape):
        raise b.error("invalid input shape", "a list like [null, 224, 224, 3]", shape)
    dtype = dtype_name(cfg.get("dtype"))  # integer inputs carry token ids (for an Embedding)
    return Info(tuple(shape), identity(len(shape)), b.new_slot()), {
        "batch_input_shape": list(shape), "dtype": dtype if dtype in INTEGER_INPUTS else "float32", "sparse": False,
        "ragged": False, "name": spec.name}


def _inits(b: Builder, cfg: dict[str, Any], names: tuple[str, ...] = ("kernel", "bias")) -> dict[str, Any]:
    return {name: initializer(b, cfg, f"{name}_initializer") for name in names}


def conv2d(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs, 4), spec.config
    df = data_format(b, cfg)
    filters, groups = int_option(b, cfg, "filters"), int_option(b, cfg, "groups", 1)
    kernel, stride = pair(b, cfg, "kernel_size", None), pair(b, cfg, "strides", 1)
    dilation = pair(b, cfg, "dilation_rate", 1)
    padding = choice(b, cfg, "padding", ("valid", "same"), "valid")
    use_bias, activation = bool_option(b, cfg, "use_bias", True), activation_name(b, cfg.get("activation"))
    channels, height, width = spatial(x, df)
    cin = known(b, channels, "input channels")
    if cin % groups or filters % groups:
        raise b.error("`groups` must divide the input channels and `filters`",
                      f"a divisor of {cin} and {filters}", groups)
    training_only(b, cfg)
    perm = layout(df)
    slot = b.take(x, perm)
    sizes, out = (height, width), []
    pads = [(0, 0), (0, 0)]
    for axis in range(2):
        n, k, s, d = sizes[axis], kernel[axis], stride[axis], dilation[axis]
        if padding == "same":
            out.append(None if n is None else -(-n // s))
            pads[axis] = same_padding(n if n is not None else 1, k, s, d) if (n is not None or s == 1) else (-1, -1)
        else:
            out.append(None if n is None else (n - (k - 1) * d - 1) // s + 1)
            if out[-1] is not None and out[-1] < 1:
                raise b.error("the kernel is larger than the input", f"spatial size >= {(k - 1) * d + 1}", n)
    symmetric = all(before == after and before >= 0 for before, after in pads)
    if padding == "same" and not symmetric:
        if all(before >= 0 for before, _ in pads):
            (top, bottom), (left, right) = pads
            slot = b.run(b.aux_name("pad"), lambda: nn.ZeroPad2d((left, right, top, bottom)), [slot])
        else:
            slot = b.run(b.aux_name("pad"), lambda: SamePad2d(kernel, stride, dilation), [slot])
    conv_padding = (pads[0][0], pads[1][0]) if symmetric else (0, 0)
    inits = _inits(b, cfg)
    factory = weighted(b, lambda device: nn.Conv2d(cin, filters, kernel, stride=stride, padding=conv_padding,
                                                   dilation=dilation, groups=groups, bias=use_bias, device=device),
                       CONV2D_WEIGHTS, inits, common(spec)["trainable"])
    b.weight_shapes[spec.name] = {"kernel": (*kernel, cin // groups, filters)}
    if use_bias:
        b.weight_shapes[spec.name]["bias"] = (filters,)
    slot = b.activate(activation, b.run(spec.name, factory, [slot]), perm)
    shape = image((filters, out[0], out[1]), df, x.shape[0])
    config = {**common(spec), "filters": filters, "kernel_size": list(kernel), "strides": list(stride),
              "padding": padding, "data_format": df, "dilation_rate": list(dilation), "groups": groups,
              "activation": activation, "use_bias": use_bias,
              **{f"{k}_initializer": v for k, v in inits.items() if v is not None}}
    return Info(shape, perm, slot), config


def dense(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    if len(x.shape) < 2:
        raise b.error("wrong input rank", "rank >= 2", x.shape)
    units, use_bias = int_option(b, cfg, "units"), bool_option(b, cfg, "use_bias", True)
    activation = activation_name(b, cfg.get("activation"), glu=keras3_dialect(cfg))
    if activation == "glu" and units % 2:
        raise b.error("`activation='glu'` splits the units in halves", "an even `units`", units)
    features = known(b, x.shape[-1], "input features (last axis)")
    training_only(b, cfg)
    perm = identity(len(x.shape))
    inits = _inits(b, cfg)
    factory = weighted(b, lambda device: nn.Linear(features, units, bias=use_bias, device=device), DENSE_WEIGHTS,
                       inits, common(spec)["trainable"])
    b.weight_shapes[spec.name] = {"kernel": (features, units), **({"bias": (units,)} if use_bias else {})}
    slot = b.activate(activation, b.run(spec.name, factory, [b.take(x, perm)]), perm)
    config = {**common(spec), "units": units, "activation": activation, "use_bias": use_bias,
              **{f"{k}_initializer": v for k, v in inits.items() if v is not None}}
    if activation == "glu":  # Keras 3's (tf_keras has no glu), and half the units come out
        return Info(x.shape[:-1] + (units // 2,), perm, slot), {**config, "dtype": dict(KERAS3_POLICY)}
    return Info(x.shape[:-1] + (units,), perm, slot), config


def flatten(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    df, rank = data_format(b, cfg), len(x.shape)
    keras_order = identity(rank) if df == "channels_last" or rank <= 2 else (0, *range(2, rank), 1)
    inv = inverse(x.perm)
    composed = tuple(inv[p] for p in keras_order)
    if composed == identity(rank):
        slot, torch_format = x.slot, "channels_last"
    elif rank > 2 and composed == (0, *range(2, rank), 1):
        slot, torch_format = x.slot, "channels_first"
    else:
        slot, torch_format = b.take(x, identity(rank)), df
    dims = [d for d in x.shape[1:] if d is not None]
    features = math.prod(dims) if len(dims) == len(x.shape) - 1 else None
    slot = b.run(spec.name, lambda: Flatten(torch_format), [slot])
    return Info((x.shape[0], features if rank > 1 else 1), identity(2), slot), {**common(spec), "data_format": df}


def dropout(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    rate = float_option(b, cfg, "rate", 0.5, 0.0, 1.0)
    noise = cfg.get("noise_shape")
    if noise is not None and (not isinstance(noise, list) or len(noise) != len(x.shape)
                              or not all(n is None or (is_int(n) and n > 0) for n in noise)):
        raise b.error("invalid `noise_shape`", f"a list of {len(x.shape)} positive ints or nulls", noise)
    seed = cfg.get("seed")
    if seed is not None and not (is_int(seed) and seed >= 0):
        raise b.error("invalid `seed`", "a non-negative int or null", seed)
    torch_noise = None if noise is None else tuple(noise[p] for p in x.perm)
    slot = b.run(spec.name, lambda: Dropout(rate, torch_noise, seed), [x.slot])
    return Info(x.shape, x.perm, slot), {**common(spec), "rate": rate, "noise_shape": noise, "seed": seed}


# ---- export of plain torch modules ---------------------------------------------------------
def _export_conv2d(state: ExportState, path: str, name: str, conv: nn.Module) -> int:
    shape, activation = state.shape, activation_of(state.following)
    if len(shape) != 3 or conv.in_channels != shape[0]:
        raise state.refuse(path, conv, f"expects {conv.in_channels} input channels; receives shape {shape}")
    if conv.padding_mode != "zeros":
        raise state.refuse(path, conv, f"padding_mode={conv.padding_mode!r}; Keras pads with zeros only")
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    sizes = list(shape[1:])
    if isinstance(conv.padding, str):  # torch allows "same" only with stride 1, padding as TensorFlow does
        padding = conv.padding
    else:
        pads = conv.padding
        same = all(same_padding(n, k, s, d) == (p, p) for n, k, s, d, p in zip(sizes, kernel, stride, dilation, pads))
        padding = "valid" if all(p == 0 for p in pads) else "same" if same else "valid"
        if not same and any(pads):
            state.add(f"{name}_pad", "ZeroPadding2D", {"padding": [[pads[0], pads[0]], [pads[1], pads[1]]],
                                                       "data_format": "channels_last"})
            sizes = [n + 2 * p for n, p in zip(sizes, pads)]
    state.add(name, "Conv2D", {
        "filters": conv.out_channels, "kernel_size": list(kernel), "strides": list(stride), "padding": padding,
        "data_format": "channels_last", "dilation_rate": list(dilation), "groups": conv.groups,
        "activation": activation or "linear", "use_bias": conv.bias is not None}, conv)
    spatial_out = tuple(-(-n // s) if padding == "same" else (n - d * (k - 1) - 1) // s + 1
                        for n, k, s, d in zip(sizes, kernel, stride, dilation))
    state.shape = (conv.out_channels, *spatial_out)
    return 2 if activation else 1


def _export_dense(state: ExportState, path: str, name: str, linear: nn.Module) -> int:
    activation = activation_of(state.following)
    if len(state.shape) != 1:
        raise state.refuse(path, linear, "Linear on a 4-D tensor; expected a flattened input")
    if linear.in_features != state.shape[0]:
        raise state.refuse(path, linear, f"expects {linear.in_features} features; receives {state.shape[0]}")
    state.add(name, "Dense", {"units": linear.out_features, "activation": activation or "linear",
                              "use_bias": linear.bias is not None}, linear, state.torch_order or None)
    state.shape, state.torch_order = (linear.out_features,), 0
    return 2 if activation else 1


def _export_flatten(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) != (1, -1):
        raise state.refuse(path, module, "expected start_dim=1, end_dim=-1")
    keras_order = isinstance(module, Flatten) and module.data_format == "channels_first"
    shape = state.shape
    if len(shape) == 3 and not keras_order and shape[1] * shape[2] > 1:
        state.torch_order = shape[0]
    state.add(name, "Flatten", {"data_format": "channels_last"})
    state.shape = (math.prod(shape),)
    return 1


def _export_dropout(state: ExportState, path: str, name: str, module: nn.Module) -> int:
    if isinstance(module, Dropout):
        noise = None
        if module.noise_shape is not None:
            perm = moved(len(state.shape) + 1)
            noise = [module.noise_shape[perm.index(d)] for d in range(len(state.shape) + 1)]
        config = {"rate": module.rate, "noise_shape": noise, "seed": module.seed}
    else:
        config = {"rate": float(module.p), "noise_shape": None, "seed": None}  # type: ignore[arg-type]
    state.add(name, "Dropout", config)
    return 1


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("InputLayer", input_layer),
    LayerEntry("Conv2D", conv2d, CONV2D_WEIGHTS, ("Convolution2D",), (nn.Conv2d,), _export_conv2d,
               example=((None, 7, 6, 3), {"filters": 4, "kernel_size": [3, 2], "strides": [2, 1], "padding": "same"})),
    LayerEntry("Dense", dense, DENSE_WEIGHTS, (), (nn.Linear,), _export_dense,
               example=((None, 5), {"units": 3})),
    LayerEntry("Flatten", flatten, (), (), (nn.Flatten, Flatten), _export_flatten),
    LayerEntry("Dropout", dropout, (), (), (nn.Dropout, Dropout), _export_dropout),
)
