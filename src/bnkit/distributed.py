"""Cross-process batch statistics for ``synchronized=True`` (both layer families).

The result equals batch normalization over the concatenation of every process' batch
(PyTorch's ``SyncBatchNorm``, Keras' ``synchronized``), on any ``torch.distributed`` backend
that has ``all_reduce`` (gloo on CPU, NCCL on GPU).  Communication per synchronized layer and
training step, whatever the batch size:

* forward: **one** ``all_reduce`` (sum) of ``2C + 1`` float64 numbers, :func:`global_moments`:
  per channel ``n_k * mean_k`` and ``n_k * (var_k + mean_k**2)`` (the count-weighted mean and
  the second moment about zero, from each process' own two-moment pass) and the element count
  ``n_k``.  With a Keras ``mask`` the moments are weighted: ``C`` weight totals more
  (``3C + 1``);
* backward: **one** ``all_reduce`` of ``2C`` float64 numbers, :class:`SyncNormalize`: per
  channel ``sum(dy)`` and ``sum(dy * x_hat)``, from which every process finishes the batch-norm
  backward of its own share.  It is skipped when the input needs no gradient (the first layer
  on raw data): every process of one program decides alike.  Gradients of gamma and beta stay
  local (each process holds the gradient of its own part of the loss, which DDP then sums).

Numerics.  Each process computes its own mean and biased variance in two passes (mean, then
mean of squared deviations), as exact as PyTorch's native kernel; the cross-process
combination ``E[x^2] - E[x]^2`` then runs in float64 on those ``C``-length vectors.  Since
every ``n_k * mean_k`` enters both sums, that difference is exactly
``sum_k n_k (var_k + (mean_k - mean)^2) / n`` up to float64 rounding, about
``1e-16 * mean**2 / var`` relative: harmless for any mean/stddev ratio below ~1e5, where
float32 sums of squares would lose every digit at ~4e3.  Chan's pairwise formula needs the
means before the sums, i.e. an ``all_gather`` of ``world * (2C + 1)`` numbers instead of one
reduction; float64 buys the same accuracy for a fixed ``2C + 1``.  The global mean and
variance are returned in the input's dtype; the backward's sums are reduced in float64 too.

The global element count stays a tensor end to end (no ``.item()``, no branching on tensor
values): ``torch.compile(fullgraph=True)`` traces the synchronized path, collectives
included.  The moving variance's Bessel correction uses that global count ``n`` (``n/(n-1)``,
1 when ``n <= 1``): the PyTorch family's unbiased rule.  The Keras family keeps tf.keras'
rule: ``synchronized=True`` forces the non-fused path, whose moving variance is fed the
*biased* global variance; masked moments are never corrected.

Uneven shares are exact, an empty one (0 samples) included: that process still joins both
all-reduces with zeros, returns an empty output, gets zero gradients for gamma and beta, and
updates its moving statistics with the global ones like every other process.  When every
process is empty the statistics stay unchanged (as for an empty batch without
synchronization).

No communication at all: in inference, without an initialised process group, and in a group
of one process (the layer then is plain batch normalization on the local batch).
``process_group`` selects the group (default: the world).  Ghost batches
(``virtual_batch_size``) are per process by definition, so they are never synchronized:
``synchronized=True`` with ``virtual_batch_size`` is refused (as tf.keras does), and
:func:`bnkit.convert_sync_batchnorm` leaves ghost-batch layers per process.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._kernels import _NormalizeWithBatchStats, _memory_format

__all__ = ["Moments", "SyncNormalize", "bessel", "global_moments", "is_distributed"]


def is_distributed(process_group: Any | None = None) -> bool:
    """True when statistics would be reduced across more than one process."""
    return bool(
        dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
    )


class Moments(NamedTuple):
    """Global statistics of a channel view, from :func:`global_moments`."""

    mean: Tensor  # (C,), the input's dtype
    var: Tensor  # (C,), biased, the input's dtype
    inv_total: Tensor  # float64: 1 / the normaliser (elements, 0-d, or weight totals, (C,)); huge for 0
    count: Tensor  # float64 0-d: elements per channel over every process


def _reduced_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


_TINY = torch.finfo(torch.float64).tiny  # 1/_TINY is finite: a zero total gives 0 * (1/_TINY) = 0


def global_moments(x: Tensor, process_group: Any | None = None, weights: Tensor | None = None) -> Moments:
    """Mean and biased variance of a channel view ``x`` (channels on dim 1) over every process.

    One ``all_reduce`` of ``2C + 1`` float64 numbers (``3C + 1`` with ``weights``, frequency
    weights broadcastable to ``x``); none without an initialised group of several processes.
    Not differentiable: :class:`SyncNormalize` differentiates through the statistics.
    """
    with torch.no_grad():
        channels = x.shape[1]
        local = x.numel() // channels if channels else 0
        wide = torch.float64
        dims = _reduced_dims(x)
        if weights is None:
            if local:  # two passes: as exact as the native (Welford) kernel and 2-5x faster on NCHW
                mean = x.mean(dims, keepdim=True)
                var = torch.sub(x, mean).square_().mean(dims)
                mean = mean.view(channels)
            else:  # an empty share contributes zeros
                mean = var = x.new_zeros(channels)
            mean64, var64 = mean.to(wide), var.to(wide)
            # (n mean, n (var + mean^2), n)
            buffer = torch.cat([mean64, torch.addcmul(var64, mean64, mean64), mean64.new_ones(1)]).mul_(local)
        else:
            w = weights.to(x.dtype).expand_as(x)
            totals = w.sum(dims)
            mean = (w * x).sum(dims) * totals.clamp_min(torch.finfo(x.dtype).tiny).reciprocal()
            m2 = (w * (x - mean.view(_channel_shape(x))).square()).sum(dims)
            mean64, totals64 = mean.to(wide), totals.to(wide)
            second = torch.addcmul(m2.to(wide), totals64, mean64.square())
            buffer = torch.cat([mean64 * totals64, second, totals64, mean64.new_full((1,), local)])
        if is_distributed(process_group):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=process_group)
        count = buffer[-1]
        total = count if weights is None else buffer[2 * channels : 3 * channels]
        inv_total = total.clamp_min(_TINY).reciprocal()
        mean64, second = (buffer[: 2 * channels].view(2, channels) * inv_total).unbind()
        var64 = torch.addcmul(second, mean64, mean64, value=-1).clamp_min_(0.0)
        mean, var = torch.stack([mean64, var64]).to(x.dtype).unbind()
        return Moments(mean, var, inv_total, count)


def bessel(count: Tensor) -> Tensor:
    """``n / (n - 1)`` for the unbiased moving variance (1 at ``n = 1``; 0 at ``n = 0``, where
    no statistic is updated)."""
    return count / (count - 1).clamp_min(1.0)


class SyncNormalize(_NormalizeWithBatchStats):
    """Batch normalization of a channel view with global statistics; the backward all-reduces.

    ``apply(x, weight, bias, mean, invstd, inv_total, weights, group)``: ``mean``/``invstd``
    (``(C,)``, from :func:`global_moments`) are treated as the functions of *every* process'
    input they are.  Forward: the native inference kernel (one pass).  Backward: one native
    pass for the local ``sum(dy)`` and ``sum(dy * x_hat)`` (which are also the local gradients
    of beta and gamma), one ``all_reduce`` of those ``2C`` numbers in float64, then
    ``dx = gamma * invstd * (dy - w * (sum(dy) + x_hat * sum(dy * x_hat)) / total)`` in two
    passes (``w`` the mask weights, 1 without a mask; a third pass applies them).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor,
        inv_total: Tensor, weights: Tensor | None, group: Any,
    ) -> Tensor:
        if x.numel() == 0:  # (the native kernels refuse empty inputs)
            return torch.empty_like(x)
        # var = invstd^-2 with epsilon 0 reproduces invstd inside the kernel
        return torch.batch_norm(x, weight, bias, mean, invstd.pow(-2), False, 0.0, 0.0, False)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, mean, invstd, inv_total, weights, group = inputs
        ctx.save_for_backward(x, weight, mean, invstd, inv_total, weights)
        ctx.has_bias = bias is not None
        ctx.group = group

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative is refused, not wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd, inv_total, weights = ctx.saved_tensors
        need = ctx.needs_input_grad
        if x.numel():
            grad = grad.contiguous(memory_format=_memory_format(x))
            _, dot, grad_sum = torch.ops.aten.native_batch_norm_backward(
                grad, x, None, None, None, mean, invstd, True, 0.0, [False, True, True],
            )  # dot = sum(dy * x_hat), grad_sum = sum(dy), per channel, this process' share
        else:
            dot = grad_sum = mean.new_zeros(mean.shape)
        gx = None
        if need[0]:
            sums = torch.stack([grad_sum, dot]).to(torch.float64)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
            if x.numel():
                # mean(dy) and mean(dy * x_hat) over every process, negated
                neg_dy, neg_dy_xhat = sums.mul_(inv_total).neg_().to(x.dtype).unbind()
                scale = invstd if weight is None else invstd * weight
                # -scale * (x_hat * mean(dy x_hat) + mean(dy)) on the inference kernel, times w, + scale * dy
                gx = torch.batch_norm(x, scale * neg_dy_xhat, scale * neg_dy, mean, invstd.pow(-2), False, 0.0, 0.0,
                                      False)
                if weights is not None:
                    gx = gx.mul_(weights)
                gx = gx.addcmul_(grad, scale.view(_channel_shape(x)))
            else:
                gx = torch.zeros_like(x)
        gw = dot if weight is not None and need[1] else None
        gb = grad_sum if ctx.has_bias and need[2] else None
        return gx, gw, gb, None, None, None, None, None
