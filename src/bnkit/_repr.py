"""Bounded representations of received values, for error messages.

A value a user (or a file) hands us can be huge, deeply nested or self-sharing
(``l = [l, l]`` 64 times is 513 bytes of pickle or JSON-like data but 2**64 items to
``repr``).  Every message that shows a received value goes through :func:`short`, which
never walks more than a few dozen items and never builds a long string.
"""
from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["short"]


class _Bounded(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 6
        self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxstring = min(limit, 80)
        self.maxlong = 40
        self.maxother = min(limit, 80)

    def repr_instance(self, obj: Any, level: int) -> str:
        # Objects of other types: their own repr, computed only for a few known-safe kinds.
        try:
            import numpy as np
            import torch

            if isinstance(obj, torch.Tensor):
                return f"tensor(shape={tuple(obj.shape)}, dtype={obj.dtype})"
            if isinstance(obj, np.ndarray):
                return f"array(shape={obj.shape}, dtype={obj.dtype})"
        except ImportError:  # pragma: no cover - numpy and torch are dependencies
            pass
        text = reprlib.Repr.repr_instance(self, obj, level)
        return text


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, safe on any nesting or sharing."""
    try:
        text = _Bounded(limit).repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
