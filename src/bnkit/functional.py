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
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence, cast

import torch
from torch import Tensor

from ._repr import short
from . import _kernels as K
from ._dropout_flatten import dropout, flatten
from ._check import (check_epsilon, check_fraction, check_input_dtype, check_sizes, check_torch_arguments)
from ._spec import Clipping
from . import distributed

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

Adjustment = Callable[[torch.Size], tuple[Tensor, Tensor]]
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class RenormState(NamedTuple):
    """Batch-renormalization state and hyper-parameters (Ioffe, 2017).

    ``clipping`` is a tensor ``[rmin, rmax, dmax]`` (``inf`` where a bound is absent), see
    :func:`clipping_tensor`.
    """

    running_stddev: Tensor
    renorm_mean: Tensor
    renorm_stddev: Tensor
    momentum: float = 0.99
    clipping: Tensor | None = None


class BatchNormStats(NamedTuple):
    """New moving statistics returned by :func:`batch_norm` (``None`` = not tracked)."""

    running_mean: Tensor | None
    running_var: Tensor | None
    running_stddev: Tensor | None = None
    renorm_mean: Tensor | None = None
    renorm_stddev: Tensor | None = None


def clipping_tensor(clipping: Mapping[str, float | None] | None, **like: object) -> Tensor:
    """``{"rmin", "rmax", "dmax"}`` as a tensor ``[rmin, rmax, dmax]``; absent keys are inf."""
    return Clipping.create(clipping).tensor(**like)


def moments(
    x: Tensor,
    axes: int | Sequence[int],
    keepdims: bool = False,
    mask: Tensor | None = None,
    correction: int = 0,
) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``x`` over ``axes`` (``tf.nn.moments`` / ``weighted_moments``).

    Args:
        x: input tensor.
        axes: the axes to reduce over (Keras convention: the *reduction* axes).
        keepdims: keep reduced axes with size 1.
        mask: optional frequency weights broadcastable to ``x`` (Keras BN passes its mask
            with a trailing axis added).  With a mask the variance is the weighted biased
            variance and ``correction`` must be 0.
        correction: 0 for the biased variance, 1 for Bessel's correction.
    """
    dims = [axes] if isinstance(axes, int) else list(axes)
    dims = [d + x.dim() if d < 0 else d for d in dims]
    if mask is None:
        var, mean = torch.var_mean(x, dim=dims, correction=correction, keepdim=True)
    else:
        if correction:
            raise ValueError(
                f"`correction` must be 0 when a `mask` is given (weighted moments are biased); received: correction={correction}"
            )
        weights = mask.to(x.dtype).expand_as(x)
        total = weights.sum(dim=dims, keepdim=True)
        inv = torch.where(total > 0, 1.0 / total, torch.zeros_like(total))
        mean = (weights * x).sum(dim=dims, keepdim=True) * inv
        var = (weights * (x - mean).square()).sum(dim=dims, keepdim=True) * inv
    if not keepdims:
        mean, var = mean.squeeze(dims), var.squeeze(dims)
    return mean, var


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
    unchanged = BatchNormStats(running_mean, running_var, *_renorm_unchanged(renorm))
    plain = renorm is None and adjustment is None and mask is None and not synchronized and virtual_batch_size is None
    if not _native_dtypes(x, weight, bias, running_mean, running_var) or not (plain or not training):
        if x.dtype in _LOW_PRECISION or not x.is_floating_point():
            x = x.float()  # float16/bfloat16: float32 math inside
        weight, bias = _float(weight), _float(bias)
    if synchronized and training and distributed.is_distributed(process_group):
        # before the empty-batch return: an empty share still joins the all-reduces
        _refuse_ghost(virtual_batch_size)
        out, stats = _synchronized(
            x, axes, mask, weight, bias, epsilon, renorm, adjustment, process_group,
            running_mean, running_var, momentum, variance_rule,
        )
        return _as(out, out_dtype), stats
    if not torch.jit.is_tracing() and x.numel() == 0:  # connected to gamma/beta (zero gradients), as torch is
        return _as(_affine(x, axes, x.dim(), weight, bias), out_dtype), unchanged
    if not training:
        if x.dtype == torch.float32:
            running_mean, running_var = _float(running_mean), _float(running_var)
        return _as(_inference(x, axes, running_mean, running_var, weight, bias, epsilon), out_dtype), unchanged
    groups = 1
    if virtual_batch_size is not None:
        groups = _ghost_groups(x.shape[0], virtual_batch_size)
    if mask is not None or synchronized:  # (synchronized here: a single process, local statistics)
        _refuse_ghost(virtual_batch_size)
    if mask is not None:
        out, mean, var, count = _composite(x, axes, mask, weight, bias, epsilon, renorm, adjustment)
    else:
        out, mean, var, count = _native(x, axes, groups, weight, bias, epsilon, renorm, adjustment)
    if variance_rule == "unbiased" and count > 1:
        var = var * (count / (count - 1))
    stats = _update(running_mean, running_var, mean, var, momentum, epsilon, renorm)
    return _as(out, out_dtype), stats


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
        olds = (running_mean, running_var, *_renorm_unchanged(renorm))
        pairs = [(old, new) for old, new in zip(olds, stats) if old is not None and new is not None]
        if pairs:
            torch._foreach_copy_([old for old, _ in pairs], [new for _, new in pairs])
    return out


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _native_dtypes(x: Tensor, *tensors: Tensor | None) -> bool:
    """Whether PyTorch's kernels take ``x`` with these parameters/statistics as they are:
    all of one dtype, and ``x`` of that dtype or float16/bfloat16 with float32 ones (the
    kernels compute in float32 inside either way)."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if not x.is_floating_point() or len(dtypes) > 1:
        return False
    dtype = dtypes.pop() if dtypes else x.dtype
    return dtype == x.dtype or (x.dtype in _LOW_PRECISION and dtype == torch.float32)


def _float(t: Tensor | None) -> Tensor | None:
    return t.float() if t is not None and t.dtype in _LOW_PRECISION else t


def _ghost_groups(batch: int, virtual_batch_size: int) -> int:
    if batch % virtual_batch_size:
        raise ValueError(
            "`virtual_batch_size` must divide the batch size in training. "
            f"Received: virtual_batch_size={virtual_batch_size} for a batch of {batch}"
        )
    return batch // virtual_batch_size


def _inference(
    x: Tensor, axes: list[int], mean: Tensor | None, var: Tensor | None,
    weight: Tensor | None, bias: Tensor | None, epsilon: float,
) -> Tensor:
    if mean is None or var is None:
        raise ValueError("Inference needs moving statistics; received `running_mean`/`running_var` = None")
    view = K.channel_view(x, axes)
    y = torch.batch_norm(view.tensor, weight, bias, mean, var, False, 0.0, epsilon, False)
    return K.restore(view, y)


def _renorm_factors(renorm: RenormState, mean: Tensor, var: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Renorm's ``r`` and ``d`` (detached, clipped).

    Under ``torch.compile`` they come from a custom op: AOTAutograd's partitioner may
    otherwise recompute them in the backward from the renorm buffers, which the layer has
    updated in place by then, and give gamma a wrong gradient (a PyTorch bug; custom ops are
    never recomputed).
    """
    args = (mean.detach(), var.detach(), renorm.renorm_mean, renorm.renorm_stddev, renorm.clipping, epsilon)
    if torch.compiler.is_compiling():
        return torch.ops.bnkit.renorm_factors(*args)
    return K.renorm_factors(*args)


def _fold_renorm(
    renorm: RenormState, weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor, epsilon: float
) -> tuple[Tensor, Tensor]:
    """Gamma and beta with renorm's ``r`` and ``d`` folded in: ``gamma * r``, ``gamma * d + beta``."""
    r, d = _renorm_factors(renorm, mean, var, epsilon)
    if weight is None:
        return r, (d if bias is None else d + bias)
    return weight * r, (weight * d if bias is None else torch.addcmul(bias, weight, d))


def _native(
    x: Tensor, axes: list[int], groups: int, weight: Tensor | None, bias: Tensor | None,
    epsilon: float, renorm: RenormState | None, adjustment: Adjustment | None,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Training on the native kernels; returns output, batch mean/var and elements per channel."""
    # elements behind each statistic: per ghost batch with ghost BN (the unbiased rule corrects each)
    count = x.numel() // math.prod([x.shape[a] for a in axes]) // groups
    # Gamma/beta are applied here unless an adjustment has to come between x-hat and them.
    w, b = (None, None) if adjustment is not None else (weight, bias)
    rows = K.row_view(x, axes, groups)
    if rows is not None:  # ghost BN over an innermost feature axis
        with torch.no_grad():
            mean_g, var_g = K.row_moments(rows)  # per (ghost batch, feature): (G, 1, C)
        mean, var = K.ghost_average(mean_g.view(-1), groups), K.ghost_average(var_g.view(-1), groups)
        if renorm is not None:
            w, b = _fold_renorm(renorm, w, b, mean, var, epsilon)
        out = K.restore_rows(x, axes, K.RowNormalize.apply(rows, w, b, mean_g, torch.rsqrt(var_g + epsilon)))
    else:
        view = K.channel_view(x, axes, groups)
        xv = view.tensor
        if renorm is None:
            # The kernel writes the exact unbiased batch variance into a zeroed "running"
            # buffer when its momentum is 1 (invstd**-2 - eps would lose it for var << eps).
            # (the backward keeps these buffers: they are not modified afterwards)
            stats_dtype = next((t.dtype for t in (w, b) if t is not None),
                               torch.float32 if xv.dtype in _LOW_PRECISION else xv.dtype)
            unbiased = xv.new_zeros(xv.shape[1], dtype=stats_dtype)
            out, mean_v, _ = torch.native_batch_norm(
                xv, K.per_view_channel(w, groups), K.per_view_channel(b, groups),
                xv.new_zeros(xv.shape[1], dtype=stats_dtype), unbiased, True, 1.0, epsilon,
            )
            per_channel = xv.numel() // xv.shape[1]
            var_v = unbiased * ((per_channel - 1) / per_channel) if per_channel > 1 else torch.zeros_like(unbiased)
            mean, var = K.ghost_average(mean_v.detach(), groups), K.ghost_average(var_v, groups)
        else:
            mean_v, var_v = torch.batch_norm_update_stats(xv.detach(), None, None, 0.0)
            mean, var = K.ghost_average(mean_v, groups), K.ghost_average(var_v, groups)
            w, b = _fold_renorm(renorm, w, b, mean, var, epsilon)
            out = K.NormalizeWithStats.apply(
                xv, K.per_view_channel(w, groups), K.per_view_channel(b, groups), mean_v, torch.rsqrt(var_v + epsilon)
            )
        out = K.restore(view, out)
    if adjustment is not None:
        out = _affine(_adjust(out, adjustment, x.shape), axes, x.dim(), weight, bias)
    return out, mean, var, count


def _composite(
    x: Tensor, axes: list[int], mask: Tensor, weight: Tensor | None, bias: Tensor | None,
    epsilon: float, renorm: RenormState | None, adjustment: Adjustment | None,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Training in plain tensor ops, differentiated by autograd: masked moments in one process."""
    reduce = [d for d in range(x.dim()) if d not in axes]
    mean, var = moments(x, reduce, keepdims=True, mask=_mask_weights(mask, x))
    y = (x - mean) * torch.rsqrt(var + epsilon)
    flat_mean, flat_var = mean.detach().reshape(-1), var.detach().reshape(-1)
    if renorm is not None:
        r, d = _renorm_factors(renorm, flat_mean, flat_var, epsilon)
        shape = _param_shape(axes, x.dim(), x.shape)
        y = y * r.view(shape) + d.view(shape)
    if adjustment is not None:
        y = _adjust(y, adjustment, x.shape)
    return _affine(y, axes, x.dim(), weight, bias), flat_mean, flat_var, 0  # masked: never Bessel-corrected


def _refuse_ghost(virtual_batch_size: int | None) -> None:
    if virtual_batch_size is not None:
        raise ValueError(
            "`mask` and `synchronized` are not supported together with `virtual_batch_size` (ghost batches are "
            f"per process); received: virtual_batch_size={virtual_batch_size}"
        )


def _synchronized(
    x: Tensor, axes: list[int], mask: Tensor | None, weight: Tensor | None, bias: Tensor | None,
    epsilon: float, renorm: RenormState | None, adjustment: Adjustment | None, process_group: object | None,
    running_mean: Tensor | None, running_var: Tensor | None, momentum: float, variance_rule: str,
) -> tuple[Tensor, BatchNormStats]:
    """Training with statistics over every process of ``process_group`` (:mod:`bnkit.distributed`).

    One all-reduce in the forward (:func:`~bnkit.distributed.global_moments`), one in the
    backward (:class:`~bnkit.distributed.SyncNormalize`); the global count stays a tensor.
    """
    view = K.channel_view(x, axes)
    weights = None
    if mask is not None:
        weights = K.channel_view(_mask_weights(mask, x).expand_as(x), axes).tensor
    stats = distributed.global_moments(view.tensor, process_group, weights)
    mean, var = stats.mean, stats.var
    w, b = (None, None) if adjustment is not None else (weight, bias)
    if renorm is not None:  # r and d from the global statistics
        w, b = _fold_renorm(renorm, w, b, mean, var, epsilon)
    y = distributed.SyncNormalize.apply(
        view.tensor, w, b, mean, torch.rsqrt(var + epsilon), stats.inv_total, weights, process_group
    )
    out = K.restore(view, y)
    if adjustment is not None:
        out = _affine(_adjust(out, adjustment, x.shape), axes, x.dim(), weight, bias)
    if variance_rule == "unbiased" and mask is None:
        var = var * distributed.bessel(stats.count).to(var.dtype)
    new = _update(running_mean, running_var, mean, var, momentum, epsilon, renorm)
    # every process empty: the statistics stay unchanged, as for an empty batch in one process
    olds = (running_mean, running_var, *_renorm_unchanged(renorm))
    kept = stats.count > 0
    return out, BatchNormStats(*[n if n is None or o is None else torch.where(kept, n, o) for n, o in zip(new, olds)])


def _mask_weights(mask: Tensor, x: Tensor) -> Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    try:
        torch.broadcast_shapes(weights.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            "`mask` must have the input's shape without its last dimension "
            f"(expected {tuple(x.shape[:-1])}); received a mask of shape {tuple(mask.shape)}"
        ) from None
    return weights


def _param_shape(axes: list[int], ndim: int, shape: torch.Size) -> list[int]:
    return [shape[d] if d in axes else 1 for d in range(ndim)]


def _affine(y: Tensor, axes: list[int], ndim: int, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    shape = _param_shape(axes, ndim, y.shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def _adjust(y: Tensor, adjustment: Adjustment, shape: torch.Size) -> Tensor:
    """``y * scale + shift`` with ``(scale, shift) = adjustment(shape)``; numbers are taken as tensors."""
    result = adjustment(shape)
    try:
        scale, shift = result
        scale, shift = (torch.as_tensor(v, dtype=y.dtype, device=y.device) for v in (scale, shift))
        return y * scale + shift
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            "`adjustment` must return a pair (scale, bias) of tensors or numbers broadcastable to the input "
            f"of shape {tuple(shape)}; received: {short(result)} ({type(error).__name__}: {short(str(error))})"
        ) from None


def _ema(olds: Sequence[Tensor | None], news: Sequence[Tensor], momentum: float) -> list[Tensor | None]:
    """Keras moving averages ``old - (old - new) * (1 - momentum)`` of several tensors.

    One ``lerp`` (``old + (new - old) * w``, the same expression) for all of them: the
    statistics are small, so the cost is the number of ops dispatched, not the arithmetic.
    """
    pairs = [(o, n if n.dtype == o.dtype else n.to(o.dtype)) for o, n in zip(olds, news) if o is not None]
    if not pairs:
        return [None] * len(olds)
    done = iter(torch._foreach_lerp([o for o, _ in pairs], [n for _, n in pairs], 1.0 - momentum))
    return [None if o is None else next(done) for o in olds]


def _update(
    running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor, var: Tensor,
    momentum: float, epsilon: float, renorm: RenormState | None,
) -> BatchNormStats:
    mean, var = mean.detach(), var.detach()
    if renorm is None:
        new_mean, new_var = _ema([running_mean, running_var], [mean, var], momentum)
        return BatchNormStats(new_mean, new_var)
    stddev = torch.sqrt(var + epsilon)
    new_mean, running_stddev = _ema([running_mean, renorm.running_stddev], [mean, stddev], momentum)
    renorm_mean, renorm_stddev = _ema([renorm.renorm_mean, renorm.renorm_stddev], [mean, stddev], renorm.momentum)
    moving_var = torch.relu(cast(Tensor, running_stddev).square() - epsilon)
    return BatchNormStats(new_mean, moving_var, running_stddev, renorm_mean, renorm_stddev)


def _renorm_unchanged(renorm: RenormState | None) -> tuple[Tensor | None, ...]:
    if renorm is None:
        return (None, None, None)
    return (renorm.running_stddev, renorm.renorm_mean, renorm.renorm_stddev)
