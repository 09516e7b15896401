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

import math
from collections.abc import Callable
from typing import Any

from .. import constraints, initializers, regularizers
from ..layers import BatchNormalization
from ._build import Builder, Info, identity
from ._config import LayerSpec
from .errors import UnsupportedLayerError

__all__ = ["keras_fused", "plan_batch_normalization"]

_INITIALIZERS = ("beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer")
_PENALTIES: tuple[tuple[str, Any], ...] = (
    ("beta_regularizer", regularizers), ("gamma_regularizer", regularizers),
    ("beta_constraint", constraints), ("gamma_constraint", constraints),
)


def keras_fused(axes: list[int], rank: int, renorm: bool, virtual_batch_size: int | None,
                fused: bool | None = None, synchronized: bool = False) -> bool:
    """Whether tf_keras 2 takes the fused path (Bessel-corrected moving variance)."""
    if fused is False or renorm or virtual_batch_size is not None or synchronized:
        return False
    return len(axes) == 1 and rank in (4, 5) and axes[0] in (1, rank - 1)


def _axes(b: Builder, raw: Any, rank: int, virtual_batch_size: Any) -> list[int]:
    values = raw if isinstance(raw, list) else [raw]
    if virtual_batch_size is not None and isinstance(raw, list) and all(isinstance(a, int) and a > 0 for a in raw):
        # A built tf_keras layer with virtual batches stores its axes shifted by the ghost
        # dimension it inserts (axis=[4] for channels-last rank 4), which tf_keras itself
        # cannot load back; bnkit undoes the shift.  bnkit writes an int or negative axes.
        values = [a - 1 for a in raw]
    if not values or not all(isinstance(a, int) and not isinstance(a, bool) and -rank <= a < rank for a in values):
        raise b.error("invalid `axis`", f"an int or a list of ints in [{-rank}, {rank})", raw)
    axes = sorted({a % rank for a in values})
    if len(axes) != len(values):
        raise b.error("duplicate axes in `axis`", "distinct axes", raw)
    return axes


def _resolve(b: Builder, key: str, module: Any, raw: Any) -> Any:
    for candidate in (raw, _drop_nones(raw)):
        try:
            return module.get(candidate, arg_name=key)
        except (ValueError, TypeError):
            continue
    raise UnsupportedLayerError(str(b.error(f"`{key}` is not available in bnkit", "a built-in Keras object", raw)))


def _drop_nones(raw: Any) -> Any:
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        return {**raw, "config": {k: v for k, v in raw["config"].items() if v is not None}}
    return raw


def plan_batch_normalization(b: Builder, spec: LayerSpec, x: Info) -> tuple[Info, dict[str, Any]]:
    """Plan a bnkit BatchNormalization for a Keras BN layer; see the module docstring."""
    cfg, rank = spec.config, len(x.shape)
    if cfg.get("adjustment") is not None:
        raise UnsupportedLayerError(str(b.error("`adjustment` is a callable", "no adjustment", cfg["adjustment"])))
    renorm = cfg.get("renorm", False) is True
    vbs = cfg.get("virtual_batch_size")
    axes = _axes(b, cfg.get("axis", -1), rank, vbs)
    synchronized = cfg.get("synchronized", False) is True
    fused = keras_fused(axes, rank, renorm, vbs, cfg.get("fused"), synchronized)
    if len(axes) > 1 or (fused and x.perm.index(axes[0]) not in (1, rank - 1)):
        perm = identity(rank)
    else:
        perm = x.perm
    torch_axes = sorted(perm.index(a) for a in axes)
    sizes = [x.shape[a] for a in axes]
    if any(size is None for size in sizes):
        raise b.error("unknown size on the BN axis", "a fixed size", x.shape)
    channels = math.prod(sizes)  # type: ignore[arg-type]
    resolved: dict[str, Any] = {key: _initializer(b, key, cfg.get(key)) for key in _INITIALIZERS}
    resolved.update({key: _resolve(b, key, module, cfg.get(key)) for key, module in _PENALTIES})
    kwargs: dict[str, Any] = {
        "axis": torch_axes[0] if len(torch_axes) == 1 else torch_axes,
        "momentum": cfg.get("momentum", 0.99), "epsilon": cfg.get("epsilon", 1e-3),
        "center": cfg.get("center", True), "scale": cfg.get("scale", True),
        "renorm": renorm, "renorm_clipping": cfg.get("renorm_clipping") if renorm else None,
        "renorm_momentum": cfg.get("renorm_momentum", 0.99), "fused": fused,
        "trainable": cfg.get("trainable", True), "virtual_batch_size": vbs, "synchronized": synchronized,
        **{key: value for key, value in resolved.items() if value is not None},
    }
    if channels > 2**31:
        raise b.error("absurd number of channels", "at most 2**31", channels)
    try:
        BatchNormalization(**kwargs, num_features=1)  # validates the arguments; one channel is enough
    except (ValueError, TypeError) as error:
        raise b.error(f"the config is not a valid BatchNormalization ({error})", "tf_keras' rules", cfg) from error
    shape = [x.shape[d] if d in axes else 1 for d in range(rank)]
    if vbs is not None:
        shape.insert(1, 1)
    keras_shape = (channels,) if len(axes) == 1 and vbs is None else tuple(shape)
    names = [n for n, on in (("gamma", kwargs["scale"]), ("beta", kwargs["center"])) if on]
    names += ["moving_mean", "moving_variance"]
    names += ["moving_stddev", "renorm_mean", "renorm_stddev"] if renorm else []
    b.weight_shapes[spec.name] = {name: keras_shape for name in names}  # type: ignore[misc]
    factory: Callable[[], BatchNormalization] = lambda: BatchNormalization(**kwargs, num_features=channels)  # noqa: E731
    slot = b.run(spec.name, factory, [b.take(x, perm)])
    config = {
        "name": spec.name, "trainable": kwargs["trainable"], "dtype": "float32",
        "axis": axes[0] if len(axes) == 1 else [a - rank for a in axes] if vbs is not None else axes,
        "momentum": kwargs["momentum"], "epsilon": kwargs["epsilon"],
        "center": kwargs["center"], "scale": kwargs["scale"],
        **{key: initializers.serialize(value) for key, value in resolved.items()
           if key in _INITIALIZERS and value is not None},
        **{key: module.serialize(resolved[key]) for key, module in _PENALTIES},
    }
    if renorm:
        config.update(renorm=True, renorm_clipping=cfg.get("renorm_clipping") or {},
                      renorm_momentum=kwargs["renorm_momentum"])
    if vbs is not None:
        config["virtual_batch_size"] = vbs
    if synchronized:
        config["synchronized"] = True
    return Info(x.shape, perm, slot), config


def _initializer(b: Builder, key: str, raw: Any) -> Any:
    if raw is None:
        return initializers.get({"beta_initializer": "zeros", "moving_mean_initializer": "zeros"}.get(key, "ones"))
    try:
        return _resolve(b, key, initializers, raw)
    except UnsupportedLayerError:
        b.note(f"`{key}` {raw!r:.80} is not available in bnkit; Keras' default is used")
        return None
