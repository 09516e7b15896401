"""Keras ``BatchNormalization`` configs -> bnkit :class:`~bnkit.BatchNormalization`.

Every config field is honoured: axis (an int, or tf_keras' normalised list such as
``[3]``, or several axes), momentum, epsilon, center, scale, the four initializers, the
regularizers and constraints, renorm (+ clipping and momentum), virtual_batch_size,
synchronized and trainable.

The moving-variance rule follows tf_keras 2 for the layer *in its Keras layout*: the
fused path (one axis, channels-first or channels-last, rank 4/5, no renorm, no ghost
batches) feeds the Bessel-corrected variance, every other path the biased one.  The torch
layer computes on a permuted tensor, so ``fused`` is passed explicitly (bnkit would
otherwise re-derive it from the torch axis); when Keras is fused but the permuted axis is
neither the first nor the last channel axis, the layer runs on the Keras layout instead.
Keras 3 always feeds the biased variance; bnkit keeps tf_keras' rule for Keras 3 files too.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .._repr import short
from .. import constraints, initializers, regularizers
from .._check import check_bool
from .._spec import BNSpec
from ..layers import BatchNormalization, TorchBatchNorm
from ..layers.batch_norm import KERAS_WEIGHT_NAMES
from ._build import Builder, Info, identity, moved
from ._config import LayerSpec
from ._entry import ExportState, LayerEntry, WeightRule, as_is, view_shape
from ._options import drop_nones, one_input
from ._torch_bn import keras_spec
from .errors import UnsupportedLayerError

__all__ = ["BN_WEIGHTS", "ENTRIES", "plan_batch_normalization"]

#: gamma -> weight, beta -> bias, moving_mean -> running_mean, moving_variance -> running_var,
#: moving_stddev -> running_stddev, renorm_mean, renorm_stddev: flat ``(C,)`` in torch;
#: Keras stores ``(1, ..., C)`` with ``virtual_batch_size`` or several axes.
BN_WEIGHTS = tuple(WeightRule(keras, attribute, as_is, view_shape(as_is), exact_shape=False)
                   for keras, attribute in KERAS_WEIGHT_NAMES.items())

_INITIALIZERS = ("beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer")
_PENALTIES: tuple[tuple[str, Any], ...] = (
    ("beta_regularizer", regularizers), ("gamma_regularizer", regularizers),
    ("beta_constraint", constraints), ("gamma_constraint", constraints),
)
_LAYER_FIELDS = ("momentum", "epsilon", "center", "scale", "renorm", "renorm_clipping", "renorm_momentum",
                 "virtual_batch_size", "synchronized")


def _resolve(b: Builder, key: str, module: Any, raw: Any) -> Any:
    for candidate in (raw, drop_nones(raw)):
        try:
            return module.get(candidate, arg_name=key)
        except (ValueError, TypeError):
            continue
    raise UnsupportedLayerError(str(b.error(f"`{key}` is not available in bnkit", "a built-in Keras object", raw)))


def batch_normalization(b: Builder, spec: LayerSpec, xs: list[Info]) -> tuple[Info, dict[str, Any]]:
    return plan_batch_normalization(b, spec, one_input(b, xs))


def plan_batch_normalization(b: Builder, spec: LayerSpec, x: Info) -> tuple[Info, dict[str, Any]]:
    """Plan a bnkit BatchNormalization for a Keras BN layer; see the module docstring."""
    cfg, rank = spec.config, len(x.shape)
    if cfg.get("adjustment") is not None:
        raise UnsupportedLayerError(str(b.error("`adjustment` is a callable", "no adjustment", cfg["adjustment"])))
    axis, vbs = cfg.get("axis", -1), cfg.get("virtual_batch_size")
    if vbs is not None and isinstance(axis, list) and all(isinstance(a, int) and a > 0 for a in axis):
        # A built tf_keras layer with virtual batches stores its axes shifted by the ghost
        # dimension it inserts (axis=[4] for channels-last rank 4), which tf_keras itself
        # cannot load back; bnkit undoes the shift.  bnkit writes an int or negative axes.
        axis = [a - 1 for a in axis]
    try:  # the Keras layer, in its Keras layout: tf_keras' validation, fused path and weight shape
        keras = BNSpec.from_keras_config(cfg, axis=axis, fused=False if cfg.get("fused") is False else None)
        built = keras.build([1 if d is None else d for d in x.shape])
        trainable = check_bool("trainable", cfg.get("trainable", True))
    except (ValueError, TypeError) as error:
        raise b.error(f"the config is not a valid BatchNormalization ({error})", "tf_keras' rules", cfg) from error
    axes = list(built.axes)
    if any(x.shape[a] is None for a in axes):
        raise b.error("unknown size on the BN axis", "a fixed size", x.shape)
    if built.features > 2**31:
        raise b.error("absurd number of channels", "at most 2**31", built.features)
    perm = identity(rank) if len(axes) > 1 or (built.fused and x.perm.index(axes[0]) not in (1, rank - 1)) else x.perm
    torch_axes = sorted(perm.index(a) for a in axes)
    resolved: dict[str, Any] = {key: _initializer(b, key, cfg.get(key)) for key in _INITIALIZERS}
    resolved.update({key: _resolve(b, key, module, cfg.get(key)) for key, module in _PENALTIES})
    kwargs: dict[str, Any] = {
        **{name: getattr(keras, name) for name in _LAYER_FIELDS}, "fused": built.fused, "trainable": trainable,
        "axis": torch_axes[0] if len(torch_axes) == 1 else torch_axes,
        **{key: value for key, value in resolved.items() if value is not None},
    }
    names = [n for n, on in (("gamma", keras.scale), ("beta", keras.center)) if on]
    names += ["moving_mean", "moving_variance"]
    names += ["moving_stddev", "renorm_mean", "renorm_stddev"] if keras.renorm else []
    b.weight_shapes[spec.name] = {name: built.keras_weight_shape for name in names}  # type: ignore[misc]
    slot = b.run(spec.name, lambda: BatchNormalization(**kwargs, num_features=built.features), [b.take(x, perm)])
    config = {
        "name": spec.name, "trainable": trainable, "dtype": "float32", **keras.keras_config(),
        "axis": axes[0] if len(axes) == 1 else [a - rank for a in axes] if vbs is not None else axes,
        **{key: initializers.serialize(value) for key, value in resolved.items()
           if key in _INITIALIZERS and value is not None},
        **{key: module.serialize(resolved[key]) for key, module in _PENALTIES},
    }
    return Info(x.shape, perm, slot), config


def _initializer(b: Builder, key: str, raw: Any) -> Any:
    if raw is None:
        return initializers.get({"beta_initializer": "zeros", "moving_mean_initializer": "zeros"}.get(key, "ones"))
    try:
        return _resolve(b, key, initializers, raw)
    except UnsupportedLayerError:
        b.note(f"`{key}` {short(raw)} is not available in bnkit; Keras' default is used")
        return None


# ---- export of plain torch modules ---------------------------------------------------------
def _export(state: ExportState, path: str, name: str, bn: nn.Module) -> int:
    if state.torch_order:
        raise state.refuse(path, bn, "batch norm between a torch-order flatten and a Linear")
    state.add(name, "BatchNormalization", export_config(state, path, bn, (1, *state.shape)), bn)
    return 1


def export_config(state: ExportState, path: str, bn: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """The Keras config of a bnkit or torch BN on an NC... input of ``shape`` (batch included)."""
    keras_family = isinstance(bn, BatchNormalization)
    if not keras_family and (bn.momentum is None or not bn.track_running_stats):
        raise state.refuse(path, bn, "momentum=None or track_running_stats=False have no Keras equivalent")
    spec, rank = bn.spec if keras_family else keras_spec(bn), len(shape)
    try:
        built = spec.build(shape)
    except ValueError as error:
        raise state.refuse(path, bn, f"it cannot normalise a {rank}-D input ({error})") from error
    keras_axes = [moved(rank)[a] for a in built.axes]
    if keras_axes != sorted(keras_axes) or spec.adjustment is not None:
        raise state.refuse(path, bn, "an adjustment, or axes whose order changes in channels-last layout")
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
        state.notes.append(f"{path}: fused={bn.fused} is not saved by Keras; Keras picks its own moving-variance "
                           "rule" if keras_family else f"{path}: Keras feeds the biased batch variance to "
                           "moving_variance here (torch: unbiased)")
    return config


ENTRIES: tuple[LayerEntry, ...] = (
    LayerEntry("BatchNormalization", batch_normalization, BN_WEIGHTS,
               torch_types=(BatchNormalization, nn.modules.batchnorm._BatchNorm), export=_export,
               example=((None, 4, 4, 3), {"axis": -1, "renorm": True})),
)
