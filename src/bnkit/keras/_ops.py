"""Handlers of Keras' shape, arithmetic, normalisation, activation and regularisation layers,
and of the applications' registered layers (``LayerScale``, ``CustomScaleLayer``).

Handler signature: ``plan(builder, layer, inputs) -> (Info, canonical_config)`` (see
:mod:`bnkit.keras._table`).  Elementwise layers keep their input's torch layout;
layers that depend on an axis translate Keras' axis through ``perm``; ``Reshape`` and
``RepeatVector`` take Keras' own layout first (they depend on element order); ``Permute``
costs nothing: it only changes the layout bookkeeping.  The operation layers
(``TFOpLambda``, Keras 3 operations) live in :mod:`bnkit.keras._ops_calls`; ``Activation``
and ``Softmax`` in :mod:`bnkit.keras._activations` (every activation name: ``_layers.ACTIVATIONS``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers import Dropout
from ._build import Builder, Info, Perm, identity, inverse, weighted
from ._config import LayerSpec
from ._entry import LayerEntry, WeightRule, as_is, view_shape
from ._call_args import APP_LAYERS
from ._layers import KERAS3_POLICY, keras3_dialect
from ._ops_layers import (Affine, KerasLayerNorm, KerasNormalization, KerasPReLU, LayerScale, Merge, RepeatVector,
                          Reshape, ScaleAdd, ThresholdedReLU, TrainingNoise, keras_view)
from ._options import bool_option, float_option, initializer, int_option, is_int, known, one_input
from ._rnn_masks import merge_dtype
from .errors import UnsupportedLayerError

__all__ = ["ENTRIES", "as_torch", "axes", "broadcast_shapes", "common", "constant", "permuted"]

Result = tuple[Info, dict[str, Any]]


def common(spec: LayerSpec, keras3: bool = False) -> dict[str, Any]:
    """The name/trainable/dtype part of a canonical config (Keras 3's policy when ``keras3``)."""
    return {"name": spec.name, "trainable": spec.config.get("trainable", True) is not False,
            "dtype": dict(KERAS3_POLICY) if keras3 else "float32"}


def axes(b: Builder, value: Any, rank: int, key: str = "axis", batch: bool = False) -> tuple[int, ...]:
    """Keras axes (an int or a list) as sorted non-negative ints; the batch axis only if ``batch``."""
    values = value if isinstance(value, (list, tuple)) else [value]
    low = 0 if batch else 1
    if not values or not all(is_int(v) and -rank <= v < rank and (v % rank) >= low for v in values) \
            or len({v % rank for v in values}) != len(values):
        raise b.error(f"invalid `{key}`", f"distinct ints in [{low - rank if low else -rank}, {rank}) "
                      f"{'' if batch else '(not the batch axis) '}for rank {rank}", value)
    return tuple(sorted(v % rank for v in values))


def permuted(keras_perm: Perm, perm: Perm) -> Perm:
    """The layout of ``y = x.transpose(keras_perm)`` that leaves ``x``'s torch tensor as it is."""
    back = inverse(keras_perm)
    return tuple(back[p] for p in perm)


def broadcast_shapes(b: Builder, shapes: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
    """NumPy broadcasting of Keras shapes (trailing alignment), None where unknown."""
    rank = max(len(s) for s in shapes)
    out: list[int | None] = []
    for axis in range(rank):
        sizes = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        fixed = {d for d in sizes if d is not None and d != 1}
        if len(fixed) > 1:
            raise b.error("inputs cannot be broadcast together", "equal sizes or 1 on every axis", shapes)
        out.append(fixed.pop() if fixed else (None if None in sizes else 1))
    return tuple(out)


def constant(b: Builder, value: Any, key: str) -> np.ndarray:
    """A float64 array from a config number, list, or Keras 3 ``__numpy__`` object.

    Kept in the config's precision: the modules cast it to the computation's dtype, as Keras'
    operations do (so a model cast to float64 uses the exact constant).  Layers whose Keras
    implementation rounds a constant to float32 first round it with :func:`as_float32`.
    """
    if isinstance(value, dict) and value.get("class_name") == "__numpy__" and isinstance(value.get("config"), dict):
        value = value["config"].get("value")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or value is None or isinstance(value, bool) or array.size > 1 << 24 \
            or not np.all(np.isfinite(array)):
        raise b.error(f"invalid `{key}`", "a finite number or a nested list of numbers", value)
    return array


def as_float32(array: np.ndarray) -> np.ndarray:
    """``array`` rounded to float32 (kept as float64): Keras' ``Rescaling`` (both frameworks) and
    Keras 3's ``Normalization`` hold their config constants in float32 whatever the compute
    dtype, so a float64 model sees the rounded value, as in Keras."""
    return array.astype(np.float32).astype(np.float64)


def as_torch(array: np.ndarray, rank: int, perm: Perm) -> float | torch.Tensor:
    """A Keras-layout constant as a float or a tensor broadcastable in torch layout ``perm``."""
    if array.ndim == 0:
        return float(array)
    broadcast = (1,) * (rank - array.ndim) + array.shape
    return keras_view(torch.from_numpy(array.copy()), broadcast, perm).contiguous()


# ---- elementwise and per-axis layers ---------------------------------------------------
def rescaling(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    values = {key: constant(b, cfg.get(key, default), key) for key, default in (("scale", None), ("offset", 0.0))}
    rank = len(x.shape)
    for key, array in values.items():
        if array.ndim > rank - 1 or any(a != 1 and d is not None and a != d
                                        for a, d in zip(array.shape[::-1], x.shape[::-1])):
            raise b.error(f"`{key}` does not broadcast against the input", f"a shape matching {x.shape[1:]}",
                          list(array.shape))
    scale, offset = (as_torch(as_float32(values[k]), rank, x.perm) for k in ("scale", "offset"))
    slot = b.run(spec.name, lambda: Affine(scale, offset), [x.slot])
    config = {**common(spec), **{k: float(v) if v.ndim == 0 else v.tolist() for k, v in values.items()}}
    return Info(x.shape, x.perm, slot), config


def normalization(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    rank = len(x.shape)
    raw_axis = cfg.get("axis", -1)
    keep = () if raw_axis is None or raw_axis == [] else axes(b, raw_axis, rank)  # Keras 3 writes None as []
    shape = tuple(known(b, x.shape[a], f"size of normalised axis {a}") for a in keep)
    broadcast = tuple(x.shape[d] if d in keep else 1 for d in range(rank))
    invert = bool_option(b, cfg, "invert", False)
    mean, variance = cfg.get("mean"), cfg.get("variance")
    if (mean is None) != (variance is None):
        raise b.error("`mean` and `variance` must be given together", "both or neither", [mean, variance])
    stored, written = mean is None, [mean, variance]
    if stored:
        b.weight_shapes[spec.name] = {"mean": shape, "variance": shape, "count": ()}
        factory = weighted(b, lambda device: KerasNormalization(shape, broadcast, x.perm, invert, True, device=device),
                           _NORMALIZATION, {}, False)
    else:
        values = []
        for index, (key, raw) in enumerate((("mean", mean), ("variance", variance))):
            array = constant(b, raw, key)  # tf_keras keeps it in the compute dtype, Keras 3 in float32:
            if keras3_dialect(cfg):  # the rounded values are written back, so both dialects read them alike
                array = as_float32(array)
                written[index] = array.tolist()
            try:
                values.append(torch.from_numpy(np.broadcast_to(array, shape).copy()))
            except ValueError:
                raise b.error(f"`{key}` does not broadcast to the normalised axes", f"shape {shape}",
                              array.shape) from None
        factory = lambda: KerasNormalization(shape, broadcast, x.perm, invert, False, *values)  # noqa: E731
    slot = b.run(spec.name, factory, [x.slot])
    axis_value = cfg.get("axis", -1)
    config = {**common(spec), "axis": axis_value if axis_value is None or isinstance(axis_value, list)
              else [axis_value], "invert": invert, "mean": written[0],
              "variance": written[1]}
    return Info(x.shape, x.perm, slot), config


def layer_normalization(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    rank = len(x.shape)
    raw = cfg.get("axis", -1)
    ordered = [v % rank for v in (raw if isinstance(raw, list) else [raw])] if axes(b, raw, rank) else []
    shape = tuple(known(b, x.shape[a], f"size of normalised axis {a}") for a in ordered)
    broadcast = tuple(x.shape[d] if d in ordered else 1 for d in range(rank))
    epsilon = float_option(b, cfg, "epsilon", 1e-3, 0.0, math.inf)
    center, scale = bool_option(b, cfg, "center", True), bool_option(b, cfg, "scale", True)
    rms = bool_option(b, cfg, "rms_scaling", False)
    dims = tuple(sorted(x.perm.index(a) for a in ordered))
    weights = {"gamma": shape} if scale else {}
    if center and not rms:
        weights["beta"] = shape
    b.weight_shapes[spec.name] = weights
    inits = {key: initializer(b, cfg, f"{key}_initializer") for key in weights}
    factory = weighted(b, lambda device: KerasLayerNorm(dims, shape, broadcast, x.perm, epsilon, center, scale, rms,
                                                        device=device),
                       _LAYER_NORMALIZATION, inits, common(spec)["trainable"])
    slot = b.run(spec.name, factory, [x.slot])
    config = {**common(spec), "axis": ordered if isinstance(raw, list) else ordered[0], "epsilon": epsilon,
              "center": center, "scale": scale}
    if rms:
        config["rms_scaling"] = True
    config.update({f"{k}_initializer": v for k, v in inits.items() if v is not None})
    return Info(x.shape, x.perm, slot), config


def prelu(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    rank = len(x.shape)
    shared = cfg.get("shared_axes")
    shared_axes = () if shared is None else axes(b, shared, rank, "shared_axes")
    shape = tuple(1 if d in shared_axes else known(b, x.shape[d], f"size of axis {d}") for d in range(1, rank))
    b.weight_shapes[spec.name] = {"alpha": shape}
    inits = {"alpha": initializer(b, cfg, "alpha_initializer")}
    factory = weighted(b, lambda device: KerasPReLU(shape, x.perm, device=device), _PRELU, inits,
                       common(spec)["trainable"])
    slot = b.run(spec.name, factory, [x.slot])
    config = {**common(spec), "shared_axes": None if shared is None else list(shared_axes)}
    if inits["alpha"] is not None:
        config["alpha_initializer"] = inits["alpha"]
    return Info(x.shape, x.perm, slot), config


def leaky_relu(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    key = "negative_slope" if "negative_slope" in cfg else "alpha"  # Keras 3 / tf_keras
    slope = float_option(b, cfg, key, 0.3, 0.0, math.inf)
    slot = b.run(spec.name, lambda: nn.LeakyReLU(slope), [x.slot])
    return Info(x.shape, x.perm, slot), {**common(spec), "alpha": slope}


def elu(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x = one_input(b, xs)
    alpha = float_option(b, spec.config, "alpha", 1.0, -math.inf, math.inf)
    slot = b.run(spec.name, lambda: nn.ELU(alpha), [x.slot])
    return Info(x.shape, x.perm, slot), {**common(spec), "alpha": alpha}


def thresholded_relu(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x = one_input(b, xs)
    theta = float_option(b, spec.config, "theta", 1.0, 0.0, math.inf)
    slot = b.run(spec.name, lambda: ThresholdedReLU(theta), [x.slot])
    return Info(x.shape, x.perm, slot), {**common(spec), "theta": theta}


def layer_scale(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, cfg = one_input(b, xs), spec.config
    rank = len(x.shape)
    channels = int_option(b, cfg, "projection_dim")
    if x.shape[-1] is not None and x.shape[-1] != channels:
        raise b.error("`projection_dim` differs from the input's last axis", f"{x.shape[-1]}", channels)
    init = float_option(b, cfg, "init_values", 1e-6, -math.inf, math.inf)
    dim = x.perm.index(rank - 1)
    b.weight_shapes[spec.name] = {"gamma": (channels,)}
    factory = weighted(b, lambda device: LayerScale(channels, dim, rank, init, device=device), _LAYER_SCALE, {},
                       common(spec)["trainable"])
    slot = b.run(spec.name, factory, [x.slot])
    keras3 = _application_layer(b, spec, "LayerScale")
    return Info(x.shape, x.perm, slot), {**common(spec, keras3), "init_values": init, "projection_dim": channels}


def custom_scale(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    if len(xs) != 2 or len(xs[0].shape) != len(xs[1].shape):
        raise b.error("wrong inputs", "two inputs of equal rank", [x.shape for x in xs])
    scale = float_option(b, spec.config, "scale", None, -math.inf, math.inf)
    perm = xs[0].perm
    shape = broadcast_shapes(b, [x.shape for x in xs])
    slot = b.run(spec.name, lambda: ScaleAdd(scale), [b.take(x, perm) for x in xs], many=True)
    keras3 = _application_layer(b, spec, "CustomScaleLayer")
    return Info(shape, perm, slot), {**common(spec, keras3), "scale": scale}


def _application_layer(b: Builder, spec: LayerSpec, cls: str) -> bool:
    """Write an application layer back under its application's module, in the dialect it was
    read in (Keras 3 if its dtype is a policy), so that Keras finds the class; True for Keras 3."""
    keras3 = keras3_dialect(spec.config)
    module = next(m for m in APP_LAYERS[cls] if m.startswith("keras." if keras3 else "tf_keras."))
    registered = cls if keras3 or cls == "LayerScale" else f"Custom>{cls}"  # as each Keras registers it
    b.written[spec.name] = {"module": module, "registered_name": registered}
    return keras3


def _merge(mode: str) -> Any:
    def merge(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
        count = "exactly two inputs" if mode == "subtract" else "two or more inputs"
        if len(xs) < 2 or (mode == "subtract" and len(xs) != 2):
            raise b.error("wrong number of inputs", count, len(xs))
        if len({len(x.shape) for x in xs}) != 1:
            raise UnsupportedLayerError(str(b.error("inputs of different ranks are not supported",
                                                    f"{count} of one rank", [x.shape for x in xs])))
        perm = xs[0].perm
        shape = broadcast_shapes(b, [x.shape for x in xs])
        slot = b.run(spec.name, lambda: Merge(mode), [b.take(x, perm) for x in xs], many=True)
        return Info(shape, perm, slot), {**common(spec), "dtype": merge_dtype(b, spec)}  # see _rnn_masks
    return merge


# ---- shape layers ----------------------------------------------------------------------
def reshape(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, target = one_input(b, xs), spec.config.get("target_shape")
    if not isinstance(target, list) or not all(is_int(d) and (d > 0 or d == -1) for d in target) \
            or sum(d == -1 for d in target) > 1 or not target:
        raise b.error("invalid `target_shape`", "a list of positive ints with at most one -1", target)
    sizes = x.shape[1:]
    total = math.prod(d for d in sizes) if all(d is not None for d in sizes) else None  # type: ignore[misc]
    fixed = math.prod(d for d in target if d != -1)
    out: list[int | None] = list(target)
    if total is not None and (total % fixed if -1 in target else total != fixed):
        raise b.error("`target_shape` does not fit the input", f"{total} elements", target)
    if -1 in target:
        out[target.index(-1)] = None if total is None else total // fixed
    slot = b.run(spec.name, lambda: Reshape(tuple(target)), [b.take(x, identity(len(x.shape)))])
    return Info((x.shape[0], *out), identity(len(out) + 1), slot), {**common(spec), "target_shape": list(target)}


def permute(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x, dims = one_input(b, xs), spec.config.get("dims")
    rank = len(x.shape)
    if not isinstance(dims, list) or sorted(dims) != list(range(1, rank)) or not all(is_int(d) for d in dims):
        raise b.error("invalid `dims`", f"a permutation of {list(range(1, rank))}", dims)
    keras_perm = (0, *dims)
    shape = tuple(x.shape[p] for p in keras_perm)
    return Info(shape, permuted(keras_perm, x.perm), x.slot), {**common(spec), "dims": list(dims)}


def repeat_vector(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
    x = one_input(b, xs, 2)
    n = int_option(b, spec.config, "n")
    slot = b.run(spec.name, lambda: RepeatVector(n), [x.slot])
    return Info((x.shape[0], n, x.shape[1]), identity(3), slot), {**common(spec), "n": n}


# ---- inference-identity regularisation -------------------------------------------------
def _noise(kind: str) -> Any:
    def noise(b: Builder, spec: LayerSpec, xs: list[Info]) -> Result:
        x, cfg = one_input(b, xs), spec.config
        rank = len(x.shape)
        config = common(spec)
        if kind == "activity":
            for key in ("l1", "l2"):
                config[key] = float_option(b, cfg, key, 0.0, 0.0, math.inf)
            b.note("ActivityRegularization only adds a training loss; bnkit does not add it (identity)")
            factory = lambda: TrainingNoise("identity", 0.0)  # noqa: E731
        elif kind == "gaussian_noise":
            config["stddev"] = float_option(b, cfg, "stddev", None, 0.0, math.inf)
            factory = lambda: TrainingNoise(kind, config["stddev"])  # noqa: E731
        else:
            config["rate"] = float_option(b, cfg, "rate", None, 0.0, 1.0)
            noise_shape = None
            if kind.startswith("spatial"):
                del config["trainable"]  # Keras 3's SpatialDropout constructors refuse it
                need = int(kind[-2])
                if rank != need + 2:
                    raise b.error("wrong input rank", f"rank {need + 2}", x.shape)
                df = cfg.get("data_format") or "channels_last"
                if df not in ("channels_last", "channels_first"):
                    raise b.error("invalid `data_format`", "'channels_last' or 'channels_first'", df)
                channel = rank - 1 if df == "channels_last" else 1
                noise_shape = tuple(x.shape[0] if d == 0 else (None if d == channel else 1) for d in range(rank))
                noise_shape = tuple(noise_shape[p] for p in x.perm)
                if need > 1:
                    config["data_format"] = df
            rate = config["rate"]
            factory = (lambda: Dropout(rate, noise_shape, cfg.get("seed"))) if noise_shape is not None \
                else (lambda: TrainingNoise(kind, rate))
        for key in ("seed",):
            if cfg.get(key) is not None:
                config[key] = cfg[key]
        slot = b.run(spec.name, factory, [x.slot])
        return Info(x.shape, x.perm, slot), config
    return noise


# ---- the table ------------------------------------------------------------------------
def _rule(keras: str, attribute: str) -> WeightRule:
    """A weight kept in Keras' own shape on the module."""
    return WeightRule(keras, attribute, as_is, view_shape(as_is))


_LAYER_NORMALIZATION = (_rule("gamma", "weight"), _rule("beta", "bias"))
_PRELU = (_rule("alpha", "weight"),)
_NORMALIZATION = (_rule("mean", "adapted_mean"), _rule("variance", "adapted_variance"), _rule("count", "count"))
_LAYER_SCALE = (_rule("gamma", "weight"),)

ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("Rescaling", rescaling),
    LayerEntry("Normalization", normalization, _NORMALIZATION, example=((None, 4, 3), {"axis": -1})),
    LayerEntry("LayerNormalization", layer_normalization, _LAYER_NORMALIZATION,
               example=((None, 3, 4, 2), {"axis": [1, 3], "epsilon": 0.01})),
    LayerEntry("PReLU", prelu, _PRELU, example=((None, 3, 4), {"shared_axes": [1]})),
    LayerEntry("LeakyReLU", leaky_relu), LayerEntry("ELU", elu), LayerEntry("ThresholdedReLU", thresholded_relu),
    LayerEntry("LayerScale", layer_scale, _LAYER_SCALE,
               example=((None, 3, 3, 4), {"init_values": 0.1, "projection_dim": 4})),
    LayerEntry("CustomScaleLayer", custom_scale),
    LayerEntry("Multiply", _merge("multiply")), LayerEntry("Subtract", _merge("subtract")),
    LayerEntry("Average", _merge("average")), LayerEntry("Maximum", _merge("maximum")),
    LayerEntry("Minimum", _merge("minimum")),
    LayerEntry("Reshape", reshape), LayerEntry("Permute", permute), LayerEntry("RepeatVector", repeat_vector),
    LayerEntry("SpatialDropout1D", _noise("spatial1d")), LayerEntry("SpatialDropout2D", _noise("spatial2d")),
    LayerEntry("SpatialDropout3D", _noise("spatial3d")), LayerEntry("GaussianNoise", _noise("gaussian_noise")),
    LayerEntry("GaussianDropout", _noise("gaussian_dropout")), LayerEntry("AlphaDropout", _noise("alpha_dropout")),
    LayerEntry("ActivityRegularization", _noise("activity")),
)
