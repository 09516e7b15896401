"""Dropout and Flatten as pure functions (re-exported by :mod:`bnkit.functional`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ._repr import short

__all__ = ["dropout", "flatten", "check_rate", "check_data_format"]


def dropout(
    x: Tensor,
    rate: float,
    *,
    training: bool = True,
    noise_shape: Sequence[int | None] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Keras dropout: zero with probability ``rate``, scale the rest by ``1 / (1 - rate)``.

    ``noise_shape`` (``None`` entries take the input's size) gives the shape of the random
    mask, broadcast over ``x``: ``(None, 1, None)`` on ``(B, T, F)`` drops the same
    features at every time step.  ``rate == 1`` returns zeros (Keras 3 and PyTorch; tf.keras
    2 raises).  The mask is drawn from ``generator`` (or the global RNG).
    """
    check_rate(rate)
    if not training or rate == 0.0:
        return x
    if rate == 1.0:
        return x * 0.0
    shape = x.shape if noise_shape is None else _resolve_noise_shape(noise_shape, x.shape)
    mask = torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
    mask = mask.ge_(rate).mul_(1.0 / (1.0 - rate))
    return x * mask


def _resolve_noise_shape(noise_shape: Sequence[int | None], shape: torch.Size) -> list[int]:
    if len(noise_shape) != len(shape):
        raise ValueError(
            f"`noise_shape` must have the input's rank ({len(shape)}); received: "
            f"noise_shape={tuple(noise_shape)} for an input of shape {tuple(shape)}"
        )
    resolved = [size if n is None else n for n, size in zip(noise_shape, shape)]
    if any(n not in (1, size) for n, size in zip(resolved, shape)):
        raise ValueError(
            "`noise_shape` must broadcast to the input: each entry must be None, 1 or the input's size. "
            f"Received: noise_shape={tuple(noise_shape)} for an input of shape {tuple(shape)}"
        )
    return resolved


def flatten(x: Tensor, data_format: str = "channels_last") -> Tensor:
    """Keras ``Flatten``: ``(B, ...) -> (B, prod(...))``; rank 1 becomes ``(B, 1)``.

    ``channels_first`` input ``(B, C, d1, ...)`` is first put in channels-last order
    ``(B, d1, ..., C)``, so the features come out in Keras' ``(h, w, c)`` order and a Keras
    Dense kernel that follows can be used unchanged.
    """
    check_data_format(data_format)
    if x.dim() == 0:
        raise ValueError(f"Flatten expects an input of rank >= 1 (a batch); received a tensor of shape {tuple(x.shape)}")
    if x.dim() == 1:
        return x.unsqueeze(1)
    if data_format == "channels_first" and x.dim() > 2:
        x = x.movedim(1, -1)
    return x.reshape(x.shape[0], -1)


def check_rate(rate: object) -> float:
    """Validate a dropout rate (a real number in [0, 1])."""
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"Invalid value {short(rate)} received for `rate`, expected a value between 0 and 1.")
    return float(rate)


def check_data_format(data_format: object) -> str:
    """Validate a Keras ``data_format`` string."""
    if data_format not in ("channels_first", "channels_last"):
        raise ValueError(
            'The `data_format` argument must be one of "channels_first", "channels_last". '
            f"Received: {short(data_format)}"
        )
    return data_format  # type: ignore[return-value]
