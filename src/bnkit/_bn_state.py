"""What a batch-normalization layer keeps, as values, and how a training step updates it.

:class:`RenormState` and :class:`BatchNormStats` are re-exported by :mod:`bnkit.functional`
(their public home).  :func:`update_statistics` applies Keras' moving averages (momentum is
the weight of the *old* value) and, with batch renormalization, keeps the moving variance
consistent with the moving standard deviation (which includes epsilon).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, cast

import torch
from torch import Tensor

__all__ = ["BatchNormStats", "RenormState", "ema", "renorm_unchanged", "update_statistics"]


class RenormState(NamedTuple):
    """Batch-renormalization state and hyper-parameters (Ioffe, 2017).

    ``clipping`` is a tensor ``[rmin, rmax, dmax]`` (``inf`` where a bound is absent), see
    :func:`bnkit.functional.clipping_tensor`.
    """

    running_stddev: Tensor
    renorm_mean: Tensor
    renorm_stddev: Tensor
    momentum: float = 0.99
    clipping: Tensor | None = None


class BatchNormStats(NamedTuple):
    """New moving statistics returned by :func:`bnkit.functional.batch_norm` (``None`` = not tracked)."""

    running_mean: Tensor | None
    running_var: Tensor | None
    running_stddev: Tensor | None = None
    renorm_mean: Tensor | None = None
    renorm_stddev: Tensor | None = None


def ema(olds: Sequence[Tensor | None], news: Sequence[Tensor], momentum: float) -> list[Tensor | None]:
    """Keras moving averages ``old - (old - new) * (1 - momentum)`` of several tensors.

    One ``lerp`` (``old + (new - old) * w``, the same expression) for all of them: the
    statistics are small, so the cost is the number of ops dispatched, not the arithmetic.
    """
    pairs = [(o, n if n.dtype == o.dtype else n.to(o.dtype)) for o, n in zip(olds, news) if o is not None]
    if not pairs:
        return [None] * len(olds)
    done = iter(torch._foreach_lerp([o for o, _ in pairs], [n for _, n in pairs], 1.0 - momentum))
    return [None if o is None else next(done) for o in olds]


def update_statistics(
    running_mean: Tensor | None, running_var: Tensor | None, mean: Tensor, var: Tensor,
    momentum: float, epsilon: float, renorm: RenormState | None,
) -> BatchNormStats:
    """The moving statistics after a training step with batch statistics ``mean``/``var``."""
    mean, var = mean.detach(), var.detach()
    if renorm is None:
        new_mean, new_var = ema([running_mean, running_var], [mean, var], momentum)
        return BatchNormStats(new_mean, new_var)
    stddev = torch.sqrt(var + epsilon)
    new_mean, running_stddev = ema([running_mean, renorm.running_stddev], [mean, stddev], momentum)
    renorm_mean, renorm_stddev = ema([renorm.renorm_mean, renorm.renorm_stddev], [mean, stddev], renorm.momentum)
    moving_var = torch.relu(cast(Tensor, running_stddev).square() - epsilon)
    return BatchNormStats(new_mean, moving_var, running_stddev, renorm_mean, renorm_stddev)


def renorm_unchanged(renorm: RenormState | None) -> tuple[Tensor | None, ...]:
    """The renorm statistics as they are (three ``None`` without renorm), in BatchNormStats' order."""
    if renorm is None:
        return (None, None, None)
    return (renorm.running_stddev, renorm.renorm_mean, renorm.renorm_stddev)
