"""The paths :func:`bnkit.functional.batch_norm` normalises a batch on, and what they share.

:func:`bnkit.functional._batch_norm` picks one path per call:

* :func:`inference`: moving statistics, PyTorch's native kernel on a channel view;
* :func:`native`: training on the native kernels (plain BN, renorm folded into the affine,
  ghost BN as a free view or on the row kernel :class:`bnkit._kernels.RowNormalize`);
* :func:`composite`: training with a mask, in plain tensor ops differentiated by autograd;
* :func:`synchronized`: training with statistics over every process (:mod:`bnkit.distributed`).

The numerics they implement are documented once, in :mod:`bnkit.functional`.  ``moments``
lives here (the composite path uses it) and is re-exported there.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import _kernels as K
from . import distributed
from ._bn_state import BatchNormStats, RenormState, renorm_unchanged, update_statistics
from ._repr import short

__all__ = ["Adjustment", "LOW_PRECISION", "affine", "as_dtype", "composite", "ghost_groups", "inference", "moments",
           "native", "native_dtypes", "refuse_ghost", "synchronized", "upcast"]

Adjustment = Callable[[torch.Size], tuple[Tensor, Tensor]]
LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (itself when it already is)."""
    return t if t.dtype == dtype else t.to(dtype)


def native_dtypes(x: Tensor, *tensors: Tensor | None) -> bool:
    """Whether PyTorch's kernels take ``x`` with these parameters/statistics as they are:
    all of one dtype, and ``x`` of that dtype or float16/bfloat16 with float32 ones (the
    kernels compute in float32 inside either way)."""
    dtypes = {t.dtype for t in tensors if t is not None}
    if not x.is_floating_point() or len(dtypes) > 1:
        return False
    dtype = dtypes.pop() if dtypes else x.dtype
    return dtype == x.dtype or (x.dtype in LOW_PRECISION and dtype == torch.float32)


def upcast(t: Tensor | None) -> Tensor | None:
    """float16/bfloat16 ``t`` as float32 (the arithmetic of every non-native path); others as they are."""
    return t.float() if t is not None and t.dtype in LOW_PRECISION else t


def ghost_groups(batch: int, virtual_batch_size: int) -> int:
    """Ghost batches in a batch of ``batch``; ``virtual_batch_size`` must divide it."""
    if batch % virtual_batch_size:
        raise ValueError(
            "`virtual_batch_size` must divide the batch size in training. "
            f"Received: virtual_batch_size={virtual_batch_size} for a batch of {batch}"
        )
    return batch // virtual_batch_size


def refuse_ghost(virtual_batch_size: int | None) -> None:
    """Ghost batches are per process and unmasked: refuse them with a mask or synchronization."""
    if virtual_batch_size is not None:
        raise ValueError(
            "`mask` and `synchronized` are not supported together with `virtual_batch_size` (ghost batches are "
            f"per process); received: virtual_batch_size={virtual_batch_size}"
        )


def inference(
    x: Tensor, axes: list[int], mean: Tensor | None, var: Tensor | None,
    weight: Tensor | None, bias: Tensor | None, epsilon: float,
) -> Tensor:
    """Normalisation with the moving statistics: one native inference call on the channel view."""
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


def native(
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
                               torch.float32 if xv.dtype in LOW_PRECISION else xv.dtype)
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
        out = affine(_adjust(out, adjustment, x.shape), axes, x.dim(), weight, bias)
    return out, mean, var, count


def composite(
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
    return affine(y, axes, x.dim(), weight, bias), flat_mean, flat_var, 0  # masked: never Bessel-corrected


def synchronized(
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
        out = affine(_adjust(out, adjustment, x.shape), axes, x.dim(), weight, bias)
    if variance_rule == "unbiased" and mask is None:
        var = var * distributed.bessel(stats.count).to(var.dtype)
    new = update_statistics(running_mean, running_var, mean, var, momentum, epsilon, renorm)
    # every process empty: the statistics stay unchanged, as for an empty batch in one process
    olds = (running_mean, running_var, *renorm_unchanged(renorm))
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


def affine(y: Tensor, axes: list[int], ndim: int, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``y * gamma + beta`` with gamma/beta broadcast along ``axes`` (either may be absent)."""
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
