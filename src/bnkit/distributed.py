"""Cross-process batch statistics for ``BatchNormalization(synchronized=True)``.

Each process' per-channel count, mean and variance are gathered with a differentiable
``all_gather`` (its backward sums the gradients with ``all_reduce``) and combined exactly, so
autograd also sums the gradient terms across processes: the result equals batch normalization over the
concatenation of every process' batch (PyTorch's SyncBatchNorm, Keras' ``synchronized``).
Works with any backend that supports ``all_gather`` (gloo on CPU, NCCL on GPU).  Without an
initialised process group, or with a single process, the local statistics are used.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_moments", "is_distributed"]


def is_distributed(process_group: Any | None = None) -> bool:
    """True when statistics would be reduced across more than one process."""
    return bool(
        dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
    )


def global_moments(
    x: Tensor, reduce_dims: Sequence[int], process_group: Any | None = None
) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance over ``reduce_dims`` and over all processes.

    Returns ``(mean, var, count)`` with ``mean``/``var`` keeping the reduced dimensions
    (size 1) and ``count`` the number of elements per channel in the global batch.
    """
    dims = list(reduce_dims)
    local_count = 1
    for d in dims:
        local_count *= x.shape[d]
    if not is_distributed(process_group):
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        return mean, var, local_count
    # Chan et al.'s parallel combination of (count, mean, M2): stable, unlike E[x^2]-E[x]^2.
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    local = torch.stack([mean, var, torch.full_like(mean, float(local_count))])
    parts = _AllGather.apply(local, process_group or dist.group.WORLD)
    means, variances, counts = parts[:, 0], parts[:, 1], parts[:, 2].detach()
    total = counts.sum(0)
    global_mean = (counts * means).sum(0) / total
    global_var = (counts * (variances + (means - global_mean).square())).sum(0) / total
    return global_mean, global_var, int(total.reshape(-1)[0].item())


class _AllGather(torch.autograd.Function):
    """Stack every process' ``local`` (same shape everywhere); differentiable.

    The gradient of ``local`` is the sum over processes of the gradient each one's output
    receives at this process' index: every process' loss depends on every part.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, group: Any) -> Tensor:
        ctx.group = group
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[dist.get_rank(ctx.group)], None
