"""One handler per Keras layer class: read its config, plan its torch modules and layout,
and return its output tensor plus the config bnkit writes back (tf_keras-style, read by
both tf_keras 2.x and Keras 3).

Handler signature: ``handler(builder, layer, inputs) -> (Info, canonical_config)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._repr import short
from .. import initializers
from ..layers import Dropout, Flatten
from ._build import Builder, Info, Perm, Shape, identity, inverse, moved
from ._config import LayerSpec
from ._layers import ACTIVATIONS, Add, AvgPoolSame2d, Concatenate, GlobalPool2d, KerasReLU, SamePad2d, same_padding
from ._mapping import present_rules
from ._options import bool_option, choice, float_option, int_option, is_int, known, one_input, pair
from .errors import UnsupportedLayerError

__all__ = ["HANDLERS", "input_layer"]

Handler = Callable[[Builder, LayerSpec, list[Info]], tuple[Info, dict[str, Any]]]
_TRAINING_ONLY = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
                  "bias_constraint")


def _common(spec: LayerSpec) -> dict[str, Any]:
    return {"name": spec.name, "trainable": spec.config.get("trainable", True) is not False, "dtype": "float32"}


def _data_format(b: Builder, cfg: dict[str, Any]) -> str:
    return choice(b, cfg, "data_format", ("channels_last", "channels_first"), "channels_last")


def _spatial(x: Info, data_format: str) -> tuple[int | None, int | None, int | None]:
    """(channels, height, width) of a rank-4 Keras tensor."""
    if data_format == "channels_last":
        return x.shape[3], x.shape[1], x.shape[2]
    return x.shape[1], x.shape[2], x.shape[3]


def _image(shape_chw: tuple[int | None, ...], data_format: str, batch: int | None) -> Shape:
    c, h, w = shape_chw
    return (batch, h, w, c) if data_format == "channels_last" else (batch, c, h, w)


def _layout(data_format: str) -> Perm:
    return moved(4) if data_format == "channels_last" else identity(4)


def _activation(b: Builder, value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("config"), str) and \
            str(value.get("module", "keras.activations")).split(".")[0] in ("keras", "tf_keras", "builtins"):
        value = value["config"]
    if value is None or value == "linear":
        return "linear"
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise UnsupportedLayerError(str(b.error("unsupported activation", f"one of {['linear', *ACTIVATIONS]}", value)))
    return value


def _activate(b: Builder, name: str, slot: int, perm: Perm) -> int:
    if name == "linear":
        return slot
    dim = perm.index(len(perm) - 1)
    return b.run(b.aux_name(name), lambda: ACTIVATIONS[name](dim), [slot])


def _initializer(b: Builder, cfg: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The serialised Keras initializer of ``key``, None (with a note) if bnkit lacks it."""
    raw = cfg.get(key)
    if raw is None:
        return None
    for candidate in (raw, _drop_nones(raw)):
        try:
            return initializers.serialize(initializers.get(candidate))
        except (ValueError, TypeError):
            continue
    b.note(f"`{key}` {short(raw)} is not available in bnkit; Keras' default is written instead")
    return None


def _drop_nones(raw: Any) -> Any:
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        return {**raw, "config": {k: v for k, v in raw["config"].items() if v is not None}}
    return raw


def _training_only(b: Builder, cfg: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if cfg.get(key) is not None:
            b.note(f"`{key}` {short(cfg[key])} has no effect in torch (not applied, not written back)")


def _weighted(b: Builder, spec: LayerSpec, cls: type[nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any],
              keras_class: str, inits: dict[str, Any], trainable: bool) -> Callable[[], nn.Module]:
    """A factory for a Conv2d/Linear: uninitialised when loading, Keras-initialised otherwise."""
    init = b.init

    def factory() -> nn.Module:
        if not init:  # shapes from "meta", then empty CPU tensors (to_empty is slow on first use)
            module = cls(*args, **kwargs, device="meta")
            for name, parameter in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype)))
        else:
            module = cls(*args, **kwargs)
            with torch.no_grad():
                for rule in present_rules(module, keras_class):
                    tensor = getattr(module, rule.torch)
                    if inits.get(rule.keras) is not None:
                        values = initializers.get(inits[rule.keras])(rule.keras_shape(tensor))
                        rule.view(tensor, None).copy_(values)
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        return module

    return factory


# ---- handlers ------------------------------------------------------------------------
def input_layer(b: Builder, spec: LayerSpec) -> tuple[Info, dict[str, Any]]:
    cfg = spec.config
    shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
    if shape is None and isinstance(cfg.get("input_shape"), list):
        shape = [None] + cfg["input_shape"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= 6 or \
            not all(d is None or (is_int(d) and 0 < d < 2**31) for d in shape):
        raise b.error("invalid input shape", "a list like [null, 224, 224, 3]", shape)
    return Info(tuple(shape), identity(len(shape)), b.new_slot()), {
        "batch_input_shape": list(shape), "dtype": "float32", "sparse": False, "ragged": False, "name": spec.name}


def conv2d(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs, 4), spec.config
    df = _data_format(b, cfg)
    filters, groups = int_option(b, cfg, "filters"), int_option(b, cfg, "groups", 1)
    kernel, stride = pair(b, cfg, "kernel_size", None), pair(b, cfg, "strides", 1)
    dilation = pair(b, cfg, "dilation_rate", 1)
    padding = choice(b, cfg, "padding", ("valid", "same"), "valid")
    use_bias, activation = bool_option(b, cfg, "use_bias", True), _activation(b, cfg.get("activation"))
    channels, height, width = _spatial(x, df)
    cin = known(b, channels, "input channels")
    if cin % groups or filters % groups:
        raise b.error("`groups` must divide the input channels and `filters`",
                      f"a divisor of {cin} and {filters}", groups)
    _training_only(b, cfg, _TRAINING_ONLY)
    perm = _layout(df)
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
    inits = {"kernel": _initializer(b, cfg, "kernel_initializer"), "bias": _initializer(b, cfg, "bias_initializer")}
    trainable = _common(spec)["trainable"]
    factory = _weighted(b, spec, nn.Conv2d, (cin, filters, kernel),
                        {"stride": stride, "padding": conv_padding, "dilation": dilation, "groups": groups,
                         "bias": use_bias}, "Conv2D", inits, trainable)
    b.weight_shapes[spec.name] = {"kernel": (*kernel, cin // groups, filters)}
    if use_bias:
        b.weight_shapes[spec.name]["bias"] = (filters,)
    slot = _activate(b, activation, b.run(spec.name, factory, [slot]), perm)
    shape = _image((filters, out[0], out[1]), df, x.shape[0])
    config = {**_common(spec), "filters": filters, "kernel_size": list(kernel), "strides": list(stride),
              "padding": padding, "data_format": df, "dilation_rate": list(dilation), "groups": groups,
              "activation": activation, "use_bias": use_bias,
              **{f"{k}_initializer": v for k, v in inits.items() if v is not None}}
    return Info(shape, perm, slot), config


def dense(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    if len(x.shape) < 2:
        raise b.error("wrong input rank", "rank >= 2", x.shape)
    units, use_bias = int_option(b, cfg, "units"), bool_option(b, cfg, "use_bias", True)
    activation = _activation(b, cfg.get("activation"))
    features = known(b, x.shape[-1], "input features (last axis)")
    _training_only(b, cfg, _TRAINING_ONLY)
    perm = identity(len(x.shape))
    inits = {"kernel": _initializer(b, cfg, "kernel_initializer"), "bias": _initializer(b, cfg, "bias_initializer")}
    factory = _weighted(b, spec, nn.Linear, (features, units), {"bias": use_bias}, "Dense", inits,
                        _common(spec)["trainable"])
    b.weight_shapes[spec.name] = {"kernel": (features, units), **({"bias": (units,)} if use_bias else {})}
    slot = _activate(b, activation, b.run(spec.name, factory, [b.take(x, perm)]), perm)
    config = {**_common(spec), "units": units, "activation": activation, "use_bias": use_bias,
              **{f"{k}_initializer": v for k, v in inits.items() if v is not None}}
    return Info(x.shape[:-1] + (units,), perm, slot), config


def _pool(mode: str) -> Handler:
    def pool(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, 4), spec.config
        df = _data_format(b, cfg)
        size = pair(b, cfg, "pool_size", 2)
        stride = pair(b, cfg, "strides", list(size)) if cfg.get("strides") is not None else size
        padding = choice(b, cfg, "padding", ("valid", "same"), "valid")
        channels, height, width = _spatial(x, df)
        perm = _layout(df)
        slot = b.take(x, perm)
        out = []
        for n, k, s in zip((height, width), size, stride):
            value = None if n is None else (-(-n // s) if padding == "same" else (n - k) // s + 1)
            if value is not None and value < 1:
                raise b.error("the pool is larger than the input", f"spatial size >= {k}", n)
            out.append(value)
        if padding == "valid":
            factory: Callable[[], nn.Module] = (lambda: nn.MaxPool2d(size, stride)) if mode == "max" \
                else (lambda: nn.AvgPool2d(size, stride))
        elif mode == "max":
            slot = b.run(b.aux_name("pad"), lambda: SamePad2d(size, stride, value=-math.inf), [slot])
            factory = lambda: nn.MaxPool2d(size, stride)  # noqa: E731
        else:
            factory = lambda: AvgPoolSame2d(size, stride)  # noqa: E731
        slot = b.run(spec.name, factory, [slot])
        config = {**_common(spec), "pool_size": list(size), "padding": padding, "strides": list(stride),
                  "data_format": df}
        return Info(_image((channels, out[0], out[1]), df, x.shape[0]), perm, slot), config
    return pool


def _global_pool(mode: str) -> Handler:
    def pool(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x, cfg = one_input(b, xs, 4), spec.config
        df, keepdims = _data_format(b, cfg), bool_option(b, cfg, "keepdims", False)
        channels = _spatial(x, df)[0]
        slot = b.run(spec.name, lambda: GlobalPool2d(mode, keepdims), [b.take(x, _layout(df))])
        config = {**_common(spec), "data_format": df, "keepdims": keepdims}
        if keepdims:
            return Info(_image((channels, 1, 1), df, x.shape[0]), _layout(df), slot), config
        return Info((x.shape[0], channels), identity(2), slot), config
    return pool


def flatten(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    df, rank = _data_format(b, cfg), len(x.shape)
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
    return Info((x.shape[0], features if rank > 1 else 1), identity(2), slot), {**_common(spec), "data_format": df}


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
    return Info(x.shape, x.perm, slot), {**_common(spec), "rate": rate, "noise_shape": noise, "seed": seed}


def activation(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x = one_input(b, xs)
    name = _activation(b, spec.config.get("activation"))
    if name == "linear":
        slot = x.slot
    else:
        dim = x.perm.index(len(x.shape) - 1)
        slot = b.run(spec.name, lambda: ACTIVATIONS[name](dim), [x.slot])
    return Info(x.shape, x.perm, slot), {**_common(spec), "activation": name}


def relu(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs), spec.config
    max_value = cfg.get("max_value")
    if max_value is not None:
        max_value = float_option(b, cfg, "max_value", 0.0, 0.0, math.inf)
    slope = float_option(b, cfg, "negative_slope", 0.0, 0.0, math.inf)
    threshold = float_option(b, cfg, "threshold", 0.0, -math.inf, math.inf)
    if (max_value, slope, threshold) == (None, 0.0, 0.0):
        factory: Callable[[], nn.Module] = nn.ReLU
    else:
        factory = lambda: KerasReLU(max_value, slope, threshold)  # noqa: E731
    slot = b.run(spec.name, factory, [x.slot])
    config = {**_common(spec), "max_value": max_value, "negative_slope": slope, "threshold": threshold}
    return Info(x.shape, x.perm, slot), config


def _axis(b: Builder, value: Any, rank: int) -> int:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not is_int(value) or not -rank <= value < rank:
        raise b.error("invalid `axis`", f"an int in [{-rank}, {rank})", value)
    return value % rank


def softmax(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x = one_input(b, xs)
    axis = _axis(b, spec.config.get("axis", -1), len(x.shape))
    dim = x.perm.index(axis)
    slot = b.run(spec.name, lambda: nn.Softmax(dim=dim), [x.slot])
    return Info(x.shape, x.perm, slot), {**_common(spec), "axis": axis}


def _merge(kind: str) -> Handler:
    def merge(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        if len(xs) < 2 or len({len(x.shape) for x in xs}) != 1:
            raise b.error("inputs of one rank needed", "two or more inputs of equal rank", [x.shape for x in xs])
        rank, perm = len(xs[0].shape), xs[0].perm
        slots = [b.take(x, perm) for x in xs]
        if kind == "add":
            shape = tuple(next((d for d in dims if d is not None), None) for dims in zip(*(x.shape for x in xs)))
            return Info(shape, perm, b.run(spec.name, Add, slots, many=True)), _common(spec)
        axis = _axis(b, spec.config.get("axis", -1), rank)
        total = None if any(x.shape[axis] is None for x in xs) else sum(x.shape[axis] for x in xs)  # type: ignore[misc]
        dim = perm.index(axis)
        shape = xs[0].shape[:axis] + (total,) + xs[0].shape[axis + 1:]
        slot = b.run(spec.name, lambda: Concatenate(dim), slots, many=True)
        return Info(shape, perm, slot), {**_common(spec), "axis": axis}
    return merge


def zero_padding(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    x, cfg = one_input(b, xs, 4), spec.config
    df, raw = _data_format(b, cfg), cfg.get("padding", 1)
    if is_int(raw):
        raw = [[raw, raw], [raw, raw]]
    elif isinstance(raw, list) and len(raw) == 2 and all(is_int(v) for v in raw):
        raw = [[raw[0], raw[0]], [raw[1], raw[1]]]
    if not (isinstance(raw, list) and len(raw) == 2 and all(
            isinstance(p, list) and len(p) == 2 and all(is_int(v) and 0 <= v < 2**20 for v in p) for p in raw)):
        raise b.error("invalid `padding`", "an int, a pair, or ((top, bottom), (left, right))", cfg.get("padding"))
    (top, bottom), (left, right) = raw
    channels, height, width = _spatial(x, df)
    slot = b.run(spec.name, lambda: nn.ZeroPad2d((left, right, top, bottom)), [b.take(x, _layout(df))])
    shape = _image((channels, _grow(height, top + bottom), _grow(width, left + right)), df, x.shape[0])
    return Info(shape, _layout(df), slot), {**_common(spec), "padding": raw, "data_format": df}


def _grow(size: int | None, extra: int) -> int | None:
    return None if size is None else size + extra


def batch_normalization(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    from ._bn import plan_batch_normalization

    return plan_batch_normalization(b, spec, one_input(b, xs))


HANDLERS: dict[str, Handler] = {
    "Conv2D": conv2d, "Dense": dense, "MaxPooling2D": _pool("max"), "AveragePooling2D": _pool("avg"),
    "GlobalAveragePooling2D": _global_pool("avg"), "GlobalMaxPooling2D": _global_pool("max"),
    "Flatten": flatten, "Dropout": dropout, "BatchNormalization": batch_normalization,
    "Activation": activation, "ReLU": relu, "Softmax": softmax, "Add": _merge("add"),
    "Concatenate": _merge("concatenate"), "ZeroPadding2D": zero_padding,
}
