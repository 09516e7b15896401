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
        # Other types: their own repr only for kinds whose repr is short and cannot recurse
        # into received data; anything else (user classes, modules, containers subclasses)
        # is shown by type, since its __repr__ may be slow, huge or hostile.
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if name in _SHAPED:
            shape = tuple(getattr(obj, "shape", ()))
            return f"{_SHAPED[name]}(shape={shape}, dtype={obj.dtype})"
        if name in _SAFE or kind.__module__ in ("pathlib", "enum", "numpy.dtypes") or kind in (int, float, complex, type):
            text = reprlib.builtins.repr(obj)  # type: ignore[attr-defined]
            return text if len(text) <= self.maxother else text[: self.maxother - 3] + "..."
        if isinstance(obj, (bytes, bytearray)):
            text = reprlib.builtins.repr(obj[: self.maxother])  # type: ignore[attr-defined]
            return text if len(obj) <= self.maxother else text[: self.maxother - 3] + "..."
        if kind.__repr__ is object.__repr__:  # the default "<T object at 0x...>" cannot recurse
            return object.__repr__(obj)
        if callable(obj) and hasattr(obj, "__qualname__"):
            return f"<{kind.__name__} {getattr(obj, '__qualname__', '?')[:60]}>"
        return f"<{kind.__name__} object>"


_SHAPED = {"torch.Tensor": "tensor", "torch.nn.parameter.Parameter": "tensor", "numpy.ndarray": "array"}
_SAFE = {"torch.dtype", "torch.device", "torch.Size", "numpy.dtype", "numpy.float16", "numpy.float32",
         "numpy.float64", "numpy.int8", "numpy.int16", "numpy.int32", "numpy.int64", "numpy.uint8",
         "numpy.bool", "numpy.bool_", "numpy.str_", "numpy.bytes_", "builtins.NoneType", "builtins.bool",
         "builtins.ellipsis", "builtins.range", "builtins.slice", "fractions.Fraction", "decimal.Decimal"}


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, safe on any nesting or sharing."""
    try:
        text = _Bounded(limit).repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
