"""``torch.nn.BatchNorm*d`` <-> bnkit :class:`~bnkit.BatchNormalization`.

=================================  ==========================================
torch                              bnkit / Keras
=================================  ==========================================
``momentum`` m (weight of new)     ``momentum`` rho = 1 - m (weight of old)
``eps``                            ``epsilon``
``affine``                         ``center`` and ``scale``
``weight``, ``bias``               ``gamma``, ``beta`` (same tensors' values)
``running_mean``, ``running_var``  ``moving_mean``, ``moving_variance``
channel dim 1                      ``axis=1``
=================================  ==========================================

**Variance rule.** torch feeds the Bessel-corrected (unbiased) batch variance to
``running_var``.  bnkit does the same on tf_keras' fused path: 4-D/5-D input with
``axis=1``, which is what ``BatchNorm2d``/``BatchNorm3d`` become.  For ``BatchNorm1d``
inputs (2-D/3-D) tf_keras takes the non-fused path and feeds the *biased* variance, and so
does the converted layer: its ``running_var`` then drifts from torch's by the factor
``n/(n-1)`` on each batch term during training.  Normalisation and inference are identical.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .._repr import short
from .._spec import BNSpec
from ..layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormalization, TorchBatchNorm

__all__ = ["from_torch_batchnorm", "keras_spec", "to_torch_batchnorm"]

_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNorm1d, BatchNorm2d, BatchNorm3d)
_BY_RANK: dict[int, type[nn.modules.batchnorm._BatchNorm]] = {
    2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def keras_spec(bn: nn.modules.batchnorm._BatchNorm) -> BNSpec:
    """A torch BN with a float ``momentum`` in Keras' convention (momenta ``1 - m``, rounded to 15 digits).

    bnkit's PyTorch family describes itself (:attr:`~bnkit.layers.TorchBatchNorm.spec`);
    ``nn.BatchNorm*d`` is ``axis=1`` with ``center = scale = affine`` and the unbiased variance rule.
    """
    spec = bn.spec if isinstance(bn, TorchBatchNorm) else BNSpec(
        axis=1, center=bn.affine, scale=bn.affine, fused=False, variance_rule="unbiased")
    return dataclasses.replace(spec, momentum=round(1.0 - float(bn.momentum), 15),  # type: ignore[arg-type]
                               epsilon=float(bn.eps), renorm_momentum=round(spec.renorm_momentum, 15))


def from_torch_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> BatchNormalization:
    """A bnkit BatchNormalization (``axis=1``) equal to ``bn`` in eval and training.

    ``bn`` is a ``torch.nn.BatchNorm1d/2d/3d`` or a ``bnkit.BatchNorm1d/2d/3d`` without
    renorm, ghost batches or synchronization (its regularizers and constraints are kept).
    The statistics and affine parameters are copied; the training mode is kept.
    ``BatchNorm2d``/``3d`` give a layer already built for 4-D/5-D input; a ``BatchNorm1d``
    stays unbuilt, since it takes 2-D or 3-D input (the first call decides).  See the module
    docstring for the one difference (``BatchNorm1d``'s moving variance in training).

    Raises:
        TypeError: ``bn`` is not a ``BatchNorm1d/2d/3d``.
        ValueError: ``momentum=None`` (cumulative average), ``track_running_stats=False``,
            an uninitialised lazy layer, none of which Keras can express, or bnkit's renorm,
            ``virtual_batch_size`` or ``synchronized``, which the conversion does not carry.
    """
    lazy = isinstance(bn, nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params()
    if not isinstance(bn, _TORCH_BN) or lazy:
        raise TypeError(
            "`bn` must be an initialised torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d (or bnkit's); "
            f"received: {type(bn).__name__}"
        )
    if bn.momentum is None:
        raise ValueError(
            "`bn.momentum` is None (a cumulative moving average), which Keras cannot express; expected a "
            "float momentum such as 0.1 (Keras momentum 0.9); received: momentum=None"
        )
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "`bn` has track_running_stats=False, so it normalises with batch statistics even in eval(); "
            "Keras always keeps moving statistics; expected track_running_stats=True; received: False"
        )
    spec, extras = keras_spec(bn), {}
    if spec.renorm or spec.virtual_batch_size is not None or spec.synchronized:
        raise ValueError(
            "from_torch_batchnorm converts plain batch normalization; expected renorm=False, "
            f"virtual_batch_size=None, synchronized=False; received: renorm={spec.renorm}, "
            f"virtual_batch_size={spec.virtual_batch_size}, synchronized={spec.synchronized}"
        )
    if isinstance(bn, TorchBatchNorm):
        extras = {f"{k}_{kind}": v for kind in ("regularizer", "constraint")
                  for k, v in getattr(bn, kind + "s").items()}
    weight = bn.weight if bn.weight is not None else bn.running_mean
    layer = BatchNormalization(
        axis=1, momentum=spec.momentum, epsilon=spec.epsilon, center=spec.center, scale=spec.scale,
        num_features=bn.num_features, device=weight.device, dtype=weight.dtype, **extras,
    )
    with torch.no_grad():
        for mine, theirs in ((layer.running_mean, bn.running_mean), (layer.running_var, bn.running_var),
                             (layer.weight, bn.weight), (layer.bias, bn.bias)):
            if mine is not None:
                mine.copy_(theirs)
        if not isinstance(bn, (nn.BatchNorm1d, BatchNorm1d)):  # build for its only rank (1d takes 2-D and 3-D)
            rank = 4 if isinstance(bn, (nn.BatchNorm2d, BatchNorm2d)) else 5
            layer.eval()(weight.new_zeros((1, bn.num_features) + (1,) * (rank - 2)))
    return layer.train(bn.training)


def to_torch_batchnorm(layer: BatchNormalization, rank: int | None = None) -> nn.modules.batchnorm._BatchNorm:
    """The ``nn.BatchNorm1d/2d/3d`` equal to ``layer`` (``rank`` picks the class if unbuilt).

    ``momentum`` becomes ``1 - momentum``; ``center=False`` gives a zero bias that does not
    train, ``scale=False`` a unit weight that does not train; with both off, ``affine=False``.
    torch always feeds the unbiased variance to ``running_var``: the same as bnkit's fused
    path (4-D/5-D input, ``axis=1``), not its non-fused one (2-D/3-D input or ``fused=False``),
    where training updates differ as described in the module docstring.

    Raises:
        TypeError: ``layer`` is not a bnkit BatchNormalization.
        ValueError: a setting torch cannot express: renorm, virtual_batch_size, adjustment,
            synchronized, trainable=False, regularizers or constraints, an axis other than 1,
            several axes, or an unbuilt layer without ``rank``.
    """
    if not isinstance(layer, BatchNormalization):
        raise TypeError(f"`layer` must be a bnkit.BatchNormalization; received: {type(layer).__name__}")
    refusals: list[tuple[bool, str, Any]] = [
        (layer.renorm, "renorm", layer.renorm),
        (layer.virtual_batch_size is not None, "virtual_batch_size", layer.virtual_batch_size),
        (layer.adjustment is not None, "adjustment", layer.adjustment),
        (layer.synchronized, "synchronized (use nn.SyncBatchNorm.convert_sync_batchnorm after converting)",
         layer.synchronized),
        (not layer.trainable, "trainable=False (torch has no frozen-statistics BN; use eval())", layer.trainable),
        (any(v is not None for v in [*layer.regularizers.values(), *layer.constraints.values()]),
         "regularizers or constraints", {"regularizers": layer.regularizers, "constraints": layer.constraints}),
    ]
    for refused, what, value in refusals:
        if refused:
            raise ValueError(f"torch.nn.BatchNorm*d cannot express `{what}`; expected the default; received: {short(value)}")
    spec = layer.spec
    built = layer.built or (spec.build((1,) * rank) if rank in _BY_RANK else None)
    if (built.axes if built else spec.axis if isinstance(spec.axis, tuple) else (spec.axis,)) != (1,):
        raise ValueError(f"torch.nn.BatchNorm*d normalises dim 1 only; expected axis=1; received: axis={short(layer.axis)}")
    if built is None or built.ndim not in _BY_RANK or layer.has_uninitialized_params():
        raise ValueError(
            "Cannot tell which BatchNorm*d to build: expected a built layer (call it once, or pass "
            f"num_features) and an input rank in 2..5 (pass `rank`); received: rank={short(built.ndim if built else rank)}"
        )
    bn = _BY_RANK[built.ndim](layer.running_mean.numel(), eps=spec.epsilon, momentum=round(1.0 - spec.momentum, 15),
                              affine=spec.center or spec.scale, device=layer.running_mean.device,
                              dtype=layer.running_mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(layer.running_mean)  # type: ignore[union-attr]
        bn.running_var.copy_(layer.running_var)  # type: ignore[union-attr]
        if bn.affine:
            bn.weight.copy_(layer.weight if layer.weight is not None else torch.ones_like(bn.weight))
            bn.bias.copy_(layer.bias if layer.bias is not None else torch.zeros_like(bn.bias))
            bn.weight.requires_grad_(spec.scale)
            bn.bias.requires_grad_(spec.center)
    return bn.train(layer.training)
