"""Pure functions behind bnkit's layers.

Every function here is stateless: ``batch_norm`` returns the *new* moving statistics
instead of updating its inputs, so it composes with ``torch.func``, checkpoints and
custom training loops.  The modules in :mod:`bnkit.layers` hold the state and delegate.

Numerics (the contract of :func:`batch_norm`):

* Normalisation always uses the biased batch variance ``v_b`` (as Keras and PyTorch).
* The moving variance is fed ``v_b`` (``variance_rule="biased"``, tf.keras' non-fused path
  and Keras 3) or ``v_b * n / (n - 1)`` (``"unbiased"``, tf.keras' fused path and PyTorch);
  with ``n == 1`` the correction factor is 1, as in TensorFlow's fused kernel.
* With ghost batches the unbiased rule corrects by ``m / (m - 1)``, ``m`` the elements per
  ghost batch and channel (each averaged variance is over ``m`` elements).
* Moving averages use Keras' momentum: ``new = old - (old - batch) * (1 - momentum)``.
* float16/bfloat16 inputs are computed in float32 and returned in their own dtype: plain BN
  and inference hand them to PyTorch's kernels as they are (float32 math inside), the other
  paths convert them to float32 and back.
* An empty batch returns an empty output and the statistics unchanged (tf.keras would
  write NaN into them).
* Plain BN calls PyTorch's native kernel once and derives the statistics from the mean and
  inverse standard deviation it returns: no extra pass over the data.  Renorm computes the
  batch statistics first (one native pass), folds ``r`` and ``d`` into the affine and
  normalises with the native inference kernel, whose backward is the native training one.
* Ghost BN (``virtual_batch_size``) on NCHW inputs is a free view for the native kernel;
  over an innermost feature axis (2-D inputs, ``axis=-1``, channels-last memory) it runs on
  :class:`bnkit._kernels.RowNormalize` (a few fused elementwise ops and one-dimension
  reductions, with the centred values recomputed for the gradient).
* ``synchronized`` statistics (:mod:`bnkit.distributed`) equal those of one process on the
  concatenated batch; an empty share there still updates the statistics with the global ones.
* ``dropout`` and ``flatten`` live in ``bnkit._dropout_flatten`` and are re-exported here.

This module holds the entry points and picks the path once per call; the paths are in
``bnkit._bn_paths`` (with :func:`moments`), the state tuples and their update in
``bnkit._bn_state``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import _bn_paths as paths
from . import _kernels as K
from . import distributed
from ._bn_paths import Adjustment, moments
from ._bn_state import BatchNormStats, RenormState, renorm_unchanged, update_statistics
from ._check import (check_epsilon, check_fraction, check_input_dtype, check_sizes, check_torch_arguments)
from ._dropout_flatten import dropout, flatten
from ._repr import short
from ._spec import Clipping

__all__ = [
    "BatchNormStats",
    "RenormState",
    "batch_norm",
    "torch_batch_norm",
    "moments",
    "dropout",
    "flatten",
    "clipping_tensor",
]


def clipping_tensor(clipping: Mapping[str, float | None] | None, **like: object) -> Tensor:
    """``{"rmin", "rmax", "dmax"}`` as a tensor ``[rmin, rmax, dmax]``; absent keys are inf."""
    return Clipping.create(clipping).tensor(**like)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    training: bool = False,
    axis: int | Sequence[int] = 1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    variance_rule: str = "biased",
    renorm: RenormState | None = None,
    virtual_batch_size: int | None = None,
    adjustment: Adjustment | None = None,
    mask: Tensor | None = None,
    synchronized: bool = False,
    process_group: object | None = None,
) -> tuple[Tensor, BatchNormStats]:
    """Keras-semantics batch normalization; returns ``(output, new_statistics)``.

    Args:
        x: input of any rank >= 1.
        running_mean, running_var: moving statistics, flat ``(C,)`` with ``C`` the product
            of the sizes of the BN axes.  Used in inference; in training the new values are
            returned (``None`` = do not track).
        weight, bias: gamma and beta, flat ``(C,)``, or ``None`` (scale/center off).
        training: batch statistics (True) or moving statistics (False).
        axis: the feature axis or axes (Keras ``axis``; negative values allowed).
        momentum: Keras momentum, the weight of the old value.
        epsilon: added to the variance.
        variance_rule: statistic fed to the moving variance, ``"biased"`` or ``"unbiased"``.
        renorm: batch renormalization state (training: returns updated renorm statistics).
        virtual_batch_size: ghost BN with Keras' strided grouping (training only).
        adjustment: ``adjustment(x.shape) -> (scale, bias)`` applied to the normalised
            value before gamma/beta, in training only.
        mask: ``x.shape[:-1]``-shaped weights for the moments (Keras' non-fused mask).
        synchronized: reduce the statistics across ``torch.distributed`` processes (training
            only; one all-reduce forward and one backward, none in a group of one process;
            see :mod:`bnkit.distributed`).
        process_group: the group for ``synchronized`` (default: the world).

    Raises:
        ValueError: ``momentum`` outside [0, 1]; ``epsilon`` not positive and finite, or so
            small that it vanishes in the input's arithmetic (see :func:`bnkit._check.check_epsilon`).
        TypeError: a complex input, or an input whose dtype differs from the parameters'
            (float64 against float32), which ``torch.nn.BatchNorm*`` refuses too.
    """
    if not torch.jit.is_tracing():
        check_fraction("momentum", momentum)
        check_epsilon("epsilon", epsilon, x.dtype if isinstance(x, Tensor) else None)
    return _batch_norm(
        x, running_mean, running_var, weight, bias, training=training, axis=axis, momentum=momentum,
        epsilon=epsilon, variance_rule=variance_rule, renorm=renorm, virtual_batch_size=virtual_batch_size,
        adjustment=adjustment, mask=mask, synchronized=synchronized, process_group=process_group,
    )


def _batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    training: bool,
    axis: int | Sequence[int],
    momentum: float,
    epsilon: float,
    variance_rule: str,
    renorm: RenormState | None,
    virtual_batch_size: int | None,
    adjustment: Adjustment | None,
    mask: Tensor | None,
    synchronized: bool,
    process_group: object | None,
) -> tuple[Tensor, BatchNormStats]:
    """:func:`batch_norm` without its scalar checks (the PyTorch family checks in its own way)."""
    if variance_rule not in ("biased", "unbiased"):
        raise ValueError(
            f"`variance_rule` must be 'biased' or 'unbiased'; received: {short(variance_rule)}"
        )
    axes = K.normalize_axes(axis, x.dim())
    if not torch.jit.is_tracing():
        check_sizes(x, axes, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
        check_input_dtype(x, running_mean, running_var, weight, bias)
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    unchanged = BatchNormStats(running_mean, running_var, *renorm_unchanged(renorm))
    plain = renorm is None and adjustment is None and mask is None and not synchronized and virtual_batch_size is None
    if not paths.native_dtypes(x, weight, bias, running_mean, running_var) or not (plain or not training):
        if x.dtype in paths.LOW_PRECISION or not x.is_floating_point():
            x = x.float()  # float16/bfloat16: float32 math inside
        weight, bias = paths.upcast(weight), paths.upcast(bias)
    if synchronized and training and distributed.is_distributed(process_group):
        # before the empty-batch return: an empty share still joins the all-reduces
        paths.refuse_ghost(virtual_batch_size)
        out, stats = paths.synchronized(
            x, axes, mask, weight, bias, epsilon, renorm, adjustment, process_group,
            running_mean, running_var, momentum, variance_rule,
        )
        return paths.as_dtype(out, out_dtype), stats
    if not torch.jit.is_tracing() and x.numel() == 0:  # connected to gamma/beta (zero gradients), as torch is
        return paths.as_dtype(paths.affine(x, axes, x.dim(), weight, bias), out_dtype), unchanged
    if not training:
        if x.dtype == torch.float32:
            running_mean, running_var = paths.upcast(running_mean), paths.upcast(running_var)
        out = paths.inference(x, axes, running_mean, running_var, weight, bias, epsilon)
        return paths.as_dtype(out, out_dtype), unchanged
    groups = 1
    if virtual_batch_size is not None:
        groups = paths.ghost_groups(x.shape[0], virtual_batch_size)
    if mask is not None or synchronized:  # (synchronized here: a single process, local statistics)
        paths.refuse_ghost(virtual_batch_size)
    if mask is not None:
        out, mean, var, count = paths.composite(x, axes, mask, weight, bias, epsilon, renorm, adjustment)
    else:
        out, mean, var, count = paths.native(x, axes, groups, weight, bias, epsilon, renorm, adjustment)
    if variance_rule == "unbiased" and count > 1:
        var = var * (count / (count - 1))
    stats = update_statistics(running_mean, running_var, mean, var, momentum, epsilon, renorm)
    return paths.as_dtype(out, out_dtype), stats


def torch_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    renorm: RenormState | None = None,
    virtual_batch_size: int | None = None,
    synchronized: bool = False,
    process_group: object | None = None,
) -> Tensor:
    """``torch.nn.functional.batch_norm``'s signature and meaning, on bnkit's core.

    PyTorch conventions: the channel dimension is 1, ``momentum`` is the weight of the
    *new* value, the running variance is fed the unbiased batch variance, and
    ``running_mean``/``running_var`` are updated in place in training.  The keyword-only
    arguments add bnkit's options (:func:`batch_norm` documents them); ``renorm`` statistics
    are updated in place too.  As torch's, it does not check ``momentum`` (PyTorch's own tests
    pass -1); :func:`batch_norm` and the layers do.
    """
    check_torch_arguments(input, running_mean, running_var, weight, bias, training, eps)
    if input.dim() < 2:
        if input.numel() == 0:
            return input.clone()  # as torch
        raise RuntimeError(f"batch_norm expects an input of at least 2 dimensions; received shape {tuple(input.shape)}")
    out, stats = _batch_norm(
        input, running_mean, running_var, weight, bias, training=training, axis=1, momentum=1.0 - momentum,
        epsilon=eps, variance_rule="unbiased", renorm=renorm, virtual_batch_size=virtual_batch_size,
        adjustment=None, mask=None, synchronized=synchronized, process_group=process_group,
    )
    if training:
        olds = (running_mean, running_var, *renorm_unchanged(renorm))
        pairs = [(old, new) for old, new in zip(olds, stats) if old is not None and new is not None]
        if pairs:
            torch._foreach_copy_([old for old, _ in pairs], [new for _, new in pairs])
    return out
