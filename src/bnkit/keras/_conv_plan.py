"""Keras' convolution family beyond Conv2D: Conv1D/Conv3D (``padding="causal"`` too),
DepthwiseConv1D/2D and SeparableConv1D/2D, as planned torch modules with their weights.

Geometry (Keras -> torch), per spatial axis of size ``n``, kernel ``k``, stride ``s``,
dilation ``d``: ``"valid"`` gives ``(n - (k-1)d - 1)//s + 1`` cells and no padding;
``"same"`` gives ``ceil(n/s)`` with TensorFlow's padding (symmetric pads go into the conv,
asymmetric ones into a pad module before it, sizes unknown at planning time into
:class:`SamePad`); ``"causal"`` (1-D only) pads ``(k-1)d`` before and nothing after.

Weight layouts: see :mod:`._conv`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import initializers
from ._build import Builder, Info, Perm, Shape, identity, moved
from ._config import LayerSpec
from ._conv_layers import SamePad, SeparableConv, pad_arguments
from ._entry import WeightRule, as_is, conv_kernel, resolve_tensor, view_shape
from ._layers import same_padding
from ._options import (activation_name, bool_option, choice, common, data_format, initializer, int_option, is_int,
                       known, one_input, training_only)

__all__ = ["DEPTHWISE_WEIGHTS", "KERNEL_WEIGHTS", "SEPARABLE_WEIGHTS", "conv", "depthwise", "depthwise_kernel",
           "geometry", "int_tuple", "join", "layout", "plan_factory", "separable", "split"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_PAD = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}
_TRAINING_ONLY = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
                  "bias_constraint", "depthwise_regularizer", "depthwise_constraint", "pointwise_regularizer",
                  "pointwise_constraint")


# ---- weight views (torch tensor -> Keras layout) -----------------------------------------
def depthwise_kernel(tensor: Tensor, channels: int | None) -> Tensor:
    """``(C*M, 1, *k) -> (*k, C*M)``: Keras' ``(*k, C, M)`` kernel flattened over its last two
    axes (the grouped conv's output channel ``c*M + m`` is Keras' ``[..., c, m]``)."""
    return tensor.permute(*range(2, tensor.dim()), 0, 1)[..., 0]


#: Conv1D/Conv3D and the transposed convs: ``kernel`` and ``bias``.
KERNEL_WEIGHTS = (WeightRule("kernel", "weight", conv_kernel, view_shape(conv_kernel)),
                  WeightRule("bias", "bias", as_is, view_shape(as_is)))
DEPTHWISE_WEIGHTS = (WeightRule("depthwise_kernel", "weight", depthwise_kernel, view_shape(depthwise_kernel)),
                     WeightRule("bias", "bias", as_is, view_shape(as_is)))
SEPARABLE_WEIGHTS = (
    WeightRule("depthwise_kernel", "depthwise.weight", depthwise_kernel, view_shape(depthwise_kernel)),
    WeightRule("pointwise_kernel", "pointwise.weight", conv_kernel, view_shape(conv_kernel)),
    WeightRule("bias", "pointwise.bias", as_is, view_shape(as_is)))


# ---- config readers ------------------------------------------------------------------------
def int_tuple(b: Builder, cfg: dict[str, Any], key: str, n: int, default: Any, low: int = 1) -> tuple[int, ...]:
    """An int or a list of ``n`` ints (Keras' ``standardize_tuple``), each in ``[low, 2**20)``."""
    value = cfg.get(key, default)
    if value is None:
        value = default
    if is_int(value):
        values: tuple[Any, ...] = (value,) * n
    elif isinstance(value, (list, tuple)) and len(value) == n:
        values = tuple(value)
    else:
        values = ()
    if not values or not all(is_int(v) and low <= v < 2**20 for v in values):
        raise b.error(f"invalid `{key}`", f"an int or a list of {n} ints in [{low}, 2**20)", value)
    return values


def layout(rank: int, df: str) -> Perm:
    """The torch layout a channels-first computation needs: ``(N, C, *spatial)``."""
    return moved(rank) if df == "channels_last" else identity(rank)


def split(x: Info, df: str) -> tuple[int | None, tuple[int | None, ...]]:
    """(channels, spatial sizes) of a Keras tensor."""
    if df == "channels_last":
        return x.shape[-1], tuple(x.shape[1:-1])
    return x.shape[1], tuple(x.shape[2:])


def join(batch: int | None, channels: int | None, sizes: Sequence[int | None], df: str) -> Shape:
    return (batch, *sizes, channels) if df == "channels_last" else (batch, channels, *sizes)


def geometry(b: Builder, sizes: Sequence[int | None], kernel: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int], padding: str) -> tuple[list[int | None], list[tuple[int, int]] | None]:
    """Output sizes and ``(before, after)`` pads per axis (None: only known when run)."""
    out: list[int | None] = []
    pads: list[tuple[int, int]] | None = []
    for n, k, s, d in zip(sizes, kernel, stride, dilation):
        span = (k - 1) * d + 1
        if padding == "valid":
            value = None if n is None else (n - span) // s + 1
            pad = (0, 0)
        elif padding == "causal":
            value, pad = (None if n is None else (n - 1) // s + 1), (span - 1, 0)
        else:
            value = None if n is None else -(-n // s)
            pad = same_padding(n if n is not None else 1, k, s, d) if n is not None or s == 1 else None
        if value is not None and value < 1:
            raise b.error("the window is larger than the input", f"spatial size >= {span}", n)
        out.append(value)
        if pad is None or pads is None:
            pads = None
        else:
            pads.append(pad)
    return out, pads


def _pad_then(b: Builder, slot: int, pads: list[tuple[int, int]] | None, kernel: Sequence[int],
              stride: Sequence[int], dilation: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """Route ``slot`` through a pad module unless the pads fit the conv's own symmetric padding."""
    rank = len(kernel)
    if pads is None:
        return b.run(b.aux_name("pad"), lambda: SamePad(kernel, stride, dilation), [slot]), (0,) * rank
    if all(before == after for before, after in pads):
        return slot, tuple(before for before, _ in pads)
    arguments = pad_arguments(pads)
    return b.run(b.aux_name("pad"), lambda: _PAD[rank](arguments, 0.0), [slot]), (0,) * rank


def plan_factory(b: Builder, make: Callable[[str], nn.Module], rules: Sequence[WeightRule],
                 shapes: dict[str, tuple[int, ...]], inits: dict[str, Any], trainable: bool) -> Callable[[], nn.Module]:
    """A module factory: uninitialised tensors when loading, else Keras' initialisers drawn in
    the Keras shapes ``shapes`` (not the view's: the depthwise view flattens ``(*k, C, M)``)."""
    init = b.init

    def factory() -> nn.Module:
        if not init:  # shapes from "meta", then empty CPU tensors
            module = make("meta")
            for owner in module.modules():
                for name, parameter in list(owner.named_parameters(recurse=False)):
                    setattr(owner, name, nn.Parameter(torch.empty(parameter.shape, dtype=parameter.dtype)))
        else:
            module = make("cpu")
            with torch.no_grad():
                for rule in rules:
                    tensor = resolve_tensor(module, rule.torch)
                    if tensor is not None and inits.get(rule.keras) is not None:
                        values = initializers.get(inits[rule.keras])(shapes[rule.keras])
                        target = rule.view(tensor, None)
                        target.copy_(values.reshape(target.shape))
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)
        return module

    return factory


def _common_options(b: Builder, spec: LayerSpec, x: Info, rank: int, causal: bool) -> dict[str, Any]:
    cfg = spec.config
    df = data_format(b, cfg)
    kernel = int_tuple(b, cfg, "kernel_size", rank, None)
    stride = int_tuple(b, cfg, "strides", rank, 1)
    dilation = int_tuple(b, cfg, "dilation_rate", rank, 1)
    padding = choice(b, cfg, "padding", ("valid", "same", "causal") if causal else ("valid", "same"), "valid")
    if padding == "causal" and df != "channels_last":
        raise b.error("`padding='causal'` needs channels_last data", "data_format='channels_last'", df)
    if max(stride) > 1 and max(dilation) > 1:
        raise b.error("`strides` > 1 together with `dilation_rate` > 1", "one of them all 1",
                      {"strides": stride, "dilation_rate": dilation})
    training_only(b, cfg, _TRAINING_ONLY)
    channels, sizes = split(x, df)
    return {"df": df, "kernel": kernel, "stride": stride, "dilation": dilation, "padding": padding,
            "use_bias": bool_option(b, cfg, "use_bias", True), "activation": activation_name(b, cfg.get("activation")),
            "cin": known(b, channels, "input channels"), "sizes": sizes}


def _plan(b: Builder, spec: LayerSpec, x: Info, o: dict[str, Any], filters: int, make: Callable[[str], nn.Module],
          rules: Sequence[WeightRule], shapes: dict[str, tuple[int, ...]],
          init_keys: dict[str, str]) -> tuple[Info, dict[str, Any]]:
    """Shared tail of every conv handler: pads, the module, the activation, the output Info."""
    rank = len(o["kernel"])
    perm = layout(rank + 2, o["df"])
    out, pads = geometry(b, o["sizes"], o["kernel"], o["stride"], o["dilation"], o["padding"])
    slot, o["torch_padding"] = _pad_then(b, b.take(x, perm), pads, o["kernel"], o["stride"], o["dilation"])
    inits = {keras: initializer(b, spec.config, key) for keras, key in init_keys.items()}
    present = {k: v for k, v in shapes.items() if k != "bias" or o["use_bias"]}
    b.weight_shapes[spec.name] = present
    factory = plan_factory(b, make, rules, present, inits, common(spec)["trainable"])
    slot = b.activate(o["activation"], b.run(spec.name, factory, [slot]), perm)
    config = {**common(spec), "kernel_size": list(o["kernel"]), "strides": list(o["stride"]),
              "padding": o["padding"], "data_format": o["df"], "dilation_rate": list(o["dilation"]),
              "activation": o["activation"], "use_bias": o["use_bias"],
              **{init_keys[k]: v for k, v in inits.items() if v is not None}}
    return Info(join(x.shape[0], filters, out, o["df"]), perm, slot), config


def conv(rank: int) -> Callable[[Builder, LayerSpec, list[Info]], tuple[Info, dict[str, Any]]]:
    """The handler of Conv1D (``padding="causal"`` too) or Conv3D."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x = one_input(b, xs, rank + 2)
        o = _common_options(b, spec, x, rank, causal=rank == 1)
        filters, groups = int_option(b, spec.config, "filters"), int_option(b, spec.config, "groups", 1)
        if o["cin"] % groups or filters % groups:
            raise b.error("`groups` must divide the input channels and `filters`",
                          f"a divisor of {o['cin']} and {filters}", groups)

        def make(device: str) -> nn.Module:
            return _CONV[rank](o["cin"], filters, o["kernel"], stride=o["stride"], padding=o["torch_padding"],
                               dilation=o["dilation"], groups=groups, bias=o["use_bias"], device=device)

        shapes = {"kernel": (*o["kernel"], o["cin"] // groups, filters), "bias": (filters,)}
        info, config = _plan(b, spec, x, o, filters, make, KERNEL_WEIGHTS, shapes,
                             {"kernel": "kernel_initializer", "bias": "bias_initializer"})
        return info, {**config, "filters": filters, "groups": groups}

    return handler


def depthwise(rank: int) -> Callable[[Builder, LayerSpec, list[Info]], tuple[Info, dict[str, Any]]]:
    """The handler of DepthwiseConv1D/2D: a conv with ``groups = in_channels``."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x = one_input(b, xs, rank + 2)
        o = _common_options(b, spec, x, rank, causal=rank == 1)
        mult, cin = int_option(b, spec.config, "depth_multiplier", 1), o["cin"]

        def make(device: str) -> nn.Module:
            return _CONV[rank](cin, cin * mult, o["kernel"], stride=o["stride"], padding=o["torch_padding"],
                               dilation=o["dilation"], groups=cin, bias=o["use_bias"], device=device)

        shapes = {"depthwise_kernel": (*o["kernel"], cin, mult), "bias": (cin * mult,)}
        info, config = _plan(b, spec, x, o, cin * mult, make, DEPTHWISE_WEIGHTS, shapes,
                             {"depthwise_kernel": "depthwise_initializer", "bias": "bias_initializer"})
        return info, {**config, "depth_multiplier": mult}

    return handler


def separable(rank: int) -> Callable[[Builder, LayerSpec, list[Info]], tuple[Info, dict[str, Any]]]:
    """The handler of SeparableConv1D/2D: a depthwise conv, then a pointwise 1x1 conv with the bias."""

    def handler(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
        x = one_input(b, xs, rank + 2)
        o = _common_options(b, spec, x, rank, causal=rank == 1)
        filters = int_option(b, spec.config, "filters")
        mult, cin = int_option(b, spec.config, "depth_multiplier", 1), o["cin"]

        def make(device: str) -> nn.Module:
            depth = _CONV[rank](cin, cin * mult, o["kernel"], stride=o["stride"], padding=o["torch_padding"],
                                dilation=o["dilation"], groups=cin, bias=False, device=device)
            point = _CONV[rank](cin * mult, filters, 1, bias=o["use_bias"], device=device)
            return SeparableConv(depth, point)

        shapes = {"depthwise_kernel": (*o["kernel"], cin, mult),
                  "pointwise_kernel": (*(1,) * rank, cin * mult, filters),
                  "bias": (filters,)}
        info, config = _plan(b, spec, x, o, filters, make, SEPARABLE_WEIGHTS, shapes,
                             {"depthwise_kernel": "depthwise_initializer",
                              "pointwise_kernel": "pointwise_initializer", "bias": "bias_initializer"})
        return info, {**config, "filters": filters, "depth_multiplier": mult}

    return handler
