"""Low-level pieces of the batch-normalization kernel.

Everything here works on a *channel view*: the input reshaped so that dimension 1 holds
every normalised feature (all BN axes, plus the ghost-batch index for ghost BN) and the
other dimensions are reduced over.  PyTorch's native kernels accept exactly that layout,
so every Keras option (any axis, several axes, strided ghost batches) runs on them.

Views are free (no copy) when the BN axes are adjacent in memory order: ``axis=1`` on any
rank, ``axis=-1`` on a contiguous input, ghost BN on NCHW.  Other layouts are permuted
once, which costs one copy.

Ghost BN whose feature axis is innermost in memory (2-D inputs, ``axis=-1`` on a
contiguous input, ``axis=1`` on channels-last memory) is the exception: its channel view
would put only ``V`` values (the ghost batch) in each of ``G * C`` channels, or need a
copy, and PyTorch's native kernels are slow on both.  It runs instead on the free
*row view* ``(V, G, L, C)`` with :class:`RowNormalize`, a handful of fused elementwise ops
and single-dimension reductions (:func:`row_moments`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor


class ChannelView(NamedTuple):
    """How an input was turned into its channel view, and how to undo it."""

    tensor: Tensor  # (A, C) or (A, C, B), or the input itself when axis == [1]
    shape: torch.Size  # shape to reshape the view's output to before `inverse`
    inverse: tuple[int, ...] | None  # permutation back to the input's order, if any
    groups: int  # ghost groups folded into the channel dimension (1 without ghost BN)
    identity: bool = False  # the view is the input itself (axes == [1], no ghost groups)


def normalize_axes(axis: int | Sequence[int], ndim: int) -> list[int]:
    """Keras' ``validate_axis``: ints become lists, negatives get ``ndim`` added.

    Raises the Keras errors: out-of-range axes and duplicates are ``ValueError``.
    """
    axes = [axis] if isinstance(axis, int) else list(axis)
    resolved = [a + ndim if a < 0 else a for a in axes]
    for a in resolved:
        if not 0 <= a < ndim:
            raise ValueError(
                "Invalid value for `axis` argument. Expected 0 <= axis < inputs.rank "
                f"(with inputs.rank={ndim}). Received: axis={tuple(resolved)}"
            )
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"Duplicate axis: {tuple(resolved)}")
    return sorted(resolved)


def channel_view(x: Tensor, axes: list[int], groups: int = 1) -> ChannelView:
    """Reshape ``x`` so that dim 1 is the (ghost-group x feature) channel dimension.

    With ``groups = G > 1`` (ghost BN) the batch (B,) is split Keras-style as (V, G) with
    V = B / G ghost batches, so sample b belongs to ghost group b mod G, and the channel
    index becomes g * C + c.
    """
    if groups > 1:
        x = x.reshape(x.shape[0] // groups, groups, *x.shape[1:])
        axes = [1] + [a + 1 for a in axes]
    ndim = x.dim()
    if axes == [1] and groups == 1:
        return ChannelView(x, x.shape, None, 1, identity=True)
    channels = math.prod([x.shape[a] for a in axes])
    if axes == list(range(axes[0], axes[-1] + 1)):
        before = math.prod(x.shape[: axes[0]])
        after = math.prod(x.shape[axes[-1] + 1 :])
        view_shape = (before, channels) if after == 1 else (before, channels, after)
        return ChannelView(x.reshape(view_shape), x.shape, None, groups)
    others = [d for d in range(ndim) if d not in axes]
    order = others + axes
    permuted = x.permute(order)
    inverse = tuple(order.index(d) for d in range(ndim))
    return ChannelView(permuted.reshape(-1, channels), permuted.shape, inverse, groups)


def restore(view: ChannelView, y: Tensor) -> Tensor:
    """Undo :func:`channel_view` on an output of the view's shape."""
    if view.identity:
        return y  # the view was the input itself: no op, no autograd node
    y = y.reshape(view.shape)
    if view.inverse is not None:
        y = y.permute(view.inverse)
    if view.groups > 1:
        y = y.flatten(0, 1)
    return y


def row_view(x: Tensor, axes: list[int], groups: int) -> Tensor | None:
    """The free ``(V, G, L, C)`` view of ``x`` for ghost BN over an innermost feature axis.

    ``V * G`` is the batch (Keras' strided grouping: sample ``v * G + g``), ``C`` the
    features and ``L`` every other position.  ``None`` when it does not apply: no ghost
    groups, several BN axes, or a feature axis that is not innermost in memory.
    """
    if groups == 1 or len(axes) != 1 or x.dim() < 2:
        return None
    if axes == [x.dim() - 1] and x.is_contiguous():
        rows = x
    elif axes == [1] and x.dim() > 2 and _memory_format(x) != torch.contiguous_format:
        rows = x.movedim(1, -1)  # free: channels-last memory already has this order
    else:
        return None
    return rows.view(x.shape[0] // groups, groups, -1, rows.shape[-1])


def restore_rows(x: Tensor, axes: list[int], y: Tensor) -> Tensor:
    """Undo :func:`row_view`: ``y`` shaped ``(V, G, L, C)`` back to the layout of ``x``."""
    if axes == [1] and x.dim() > 2:  # channels-last memory: the channels were moved last
        return y.view(x.movedim(1, -1).shape).movedim(-1, 1)
    return y.view(x.shape)


def row_sum(t: Tensor) -> Tensor:
    """Sum of a ``(V, G, L, C)`` tensor over ``V`` and ``L``, shaped ``(G, 1, C)``.

    Two single-dimension reductions: PyTorch reduces one dimension of a contiguous tensor
    at memory speed, but ``sum((0, 2))`` at a fraction of it (measured 12x slower at
    ``(8, 4, 784, 256)``).
    """
    v, g, l, c = t.shape
    if l > 1:
        t = t.reshape(v * g, l, c).sum(1)
    return t.reshape(v, g * c).sum(0).view(g, 1, c)


def row_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of a row view over ``V`` and ``L``, each ``(G, 1, C)``."""
    count = x.shape[0] * x.shape[2]
    mean = row_sum(x).div_(count)
    centered = torch.sub(x, mean)
    return mean, row_sum(centered.square_()).div_(count)


class _NormalizeWithBatchStats(torch.autograd.Function):
    """Batch normalization of ``x`` given its batch ``mean`` and ``invstd = 1/sqrt(var + eps)``.

    ``forward(x, weight, bias, mean, invstd)``; the backward treats ``mean`` and ``invstd``
    as the functions of ``x`` they are, so the pair equals training-mode batch norm, while
    the caller may compute the affine from the statistics first (batch renorm's
    ``gamma * r``).  Subclasses differ in the memory layout they handle.

    ``apply`` skips ``Function.apply``'s per-call signature binding (``inspect``, which
    costs more than a small batch norm): the arguments are positional.  Under ``torch.func``
    transforms the regular path runs (``setup_context`` keeps them working).
    """

    @classmethod
    def apply(cls, *args: object) -> Tensor:  # type: ignore[override]
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)  # the C++ entry point

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, mean, invstd = inputs
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]


class RowNormalize(_NormalizeWithBatchStats):
    """:class:`_NormalizeWithBatchStats` on a row view ``(V, G, L, C)``.

    Statistics are ``(G, 1, C)``; ``weight``/``bias`` ``(C,)`` (shared by the ghost groups)
    or ``None``.  Forward is one fused multiply-add; backward is two reductions and two
    fused multiply-adds.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor) -> Tensor:
        scale = invstd if weight is None else invstd * weight
        shift = torch.mul(mean, scale).neg_() if bias is None else torch.addcmul(bias, mean, scale, value=-1)
        return torch.addcmul(shift, x, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative is refused, not wrong
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        count = x.shape[0] * x.shape[2]
        grad_sum = row_sum(grad)
        centered = torch.sub(x, mean)
        buffer = torch.mul(centered, grad)  # becomes gx: two large allocations, not three
        dot = row_sum(buffer)
        gx = gw = gb = None
        if need[0]:
            # (grad - mean(grad) - (x - mean) * invstd^2 * mean(grad * (x - mean))) * gamma * invstd
            scale = invstd if weight is None else invstd * weight
            along_centered = (scale * invstd).mul_(invstd).mul_(dot).mul_(-1.0 / count)
            constant = torch.mul(scale, grad_sum).mul_(-1.0 / count)
            gx = torch.addcmul(constant, grad, scale, out=buffer).addcmul_(centered, along_centered)
        if weight is not None and need[1]:
            gw = (dot * invstd).sum((0, 1))
        if ctx.has_bias and need[2]:  # type: ignore[attr-defined]
            gb = grad_sum.sum((0, 1))
        return gx, gw, gb, None, None


def per_view_channel(t: Tensor | None, groups: int) -> Tensor | None:
    """Repeat a per-feature vector for each ghost group (index g * C + c)."""
    if t is None or groups == 1:
        return t
    return t.repeat(groups)


def ghost_average(t: Tensor, groups: int) -> Tensor:
    """Average per-(ghost, feature) statistics over the ghost groups."""
    if groups == 1:
        return t
    return t.view(groups, -1).mean(0)


class NormalizeWithStats(_NormalizeWithBatchStats):
    """:class:`_NormalizeWithBatchStats` on a channel view, with PyTorch's native kernels.

    Forward is the inference kernel fed with the batch statistics; backward is the native
    training backward.  With the statistics from one native pass this costs what
    training-mode ``native_batch_norm`` costs.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor) -> Tensor:
        # var = invstd^-2 with epsilon 0 reproduces invstd inside the kernel
        return torch.batch_norm(x, weight, bias, mean, invstd.pow(-2), False, 0.0, 0.0, False)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(memory_format=_memory_format(x)),
            x,
            weight,
            None,
            None,
            mean,
            invstd,
            True,
            0.0,  # epsilon: unused in training mode, where invstd is given
            [need[0], weight is not None and need[1], ctx.has_bias and need[2]],  # type: ignore[attr-defined]
        )
        return gx, gw, gb, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    if torch._C._are_functorch_transforms_active():  # vmap cannot be asked about layouts
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


# ---- batch renormalization's r and d -------------------------------------------------------
def renorm_factors(
    mean: Tensor, var: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, clipping: Tensor | None, epsilon: float
) -> tuple[Tensor, Tensor]:
    """Renorm's ``r = stddev / renorm_stddev`` and ``d = (mean - renorm_mean) / renorm_stddev``,
    clipped by ``clipping = [rmin, rmax, dmax]``; also the op ``bnkit::renorm_factors``."""
    stddev = var.add(epsilon).sqrt_()
    reference = torch.clamp(renorm_stddev, min=math.sqrt(epsilon))
    r = stddev / reference
    d = torch.sub(mean, renorm_mean).div_(reference)
    if clipping is not None:
        if clipping.dtype != r.dtype or clipping.device != r.device:
            clipping = clipping.to(r)
        rmin, rmax, dmax = clipping.unbind()
        r.clamp_(rmin, rmax)
        d.clamp_(-dmax, dmax)
    return r, d


@torch.library.custom_op("bnkit::renorm_factors", mutates_args=())
def _renorm_factors_op(
    mean: Tensor, var: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, clipping: Tensor | None, epsilon: float
) -> tuple[Tensor, Tensor]:
    return renorm_factors(mean, var, renorm_mean, renorm_stddev, clipping, epsilon)


@_renorm_factors_op.register_fake
def _(mean: Tensor, var: Tensor, renorm_mean: Tensor, renorm_stddev: Tensor, clipping: Tensor | None,
      epsilon: float) -> tuple[Tensor, Tensor]:
    r_dtype = torch.promote_types(var.dtype, renorm_stddev.dtype)
    d_dtype = torch.promote_types(torch.promote_types(mean.dtype, renorm_mean.dtype), renorm_stddev.dtype)
    return mean.new_empty(mean.shape, dtype=r_dtype), mean.new_empty(mean.shape, dtype=d_dtype)
