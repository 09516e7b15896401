"""Read Keras layer-config values with validation and tf_keras-style messages.

Each reader takes the :class:`~bnkit.keras._build.Builder` (for the layer name in errors),
the layer config, the key and a default; a wrong value raises KerasFormatError saying what
was expected and what was received.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._build import Builder, Info
from .errors import UnsupportedLayerError

__all__ = ["bool_option", "choice", "float_option", "int_option", "is_int", "known", "one_input", "pair"]


def _get(b: Builder, cfg: dict[str, Any], key: str, default: Any, check: Callable[[Any], bool], expected: str) -> Any:
    value = cfg.get(key, default)
    if not check(value):
        raise b.error(f"invalid `{key}`", expected, value)
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_option(b: Builder, cfg: dict[str, Any], key: str, default: Any = None) -> int:
    return int(_get(b, cfg, key, default, lambda v: is_int(v) and 0 < v < 2**31, "a positive int"))


def pair(b: Builder, cfg: dict[str, Any], key: str, default: Any) -> tuple[int, int]:
    value = _get(b, cfg, key, default, lambda v: is_int(v) or (
        isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) for x in v)), "an int or a pair of ints")
    values = (value, value) if is_int(value) else (value[0], value[1])
    if min(values) < 1 or max(values) >= 2**20:
        raise b.error(f"invalid `{key}`", "sizes between 1 and 2**20", value)
    return values


def bool_option(b: Builder, cfg: dict[str, Any], key: str, default: bool) -> bool:
    return bool(_get(b, cfg, key, default, lambda v: isinstance(v, bool), "True or False"))


def float_option(b: Builder, cfg: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    return float(_get(b, cfg, key, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                      and low <= v <= high, f"a number in [{low}, {high}]"))


def choice(b: Builder, cfg: dict[str, Any], key: str, options: tuple[str, ...], default: str) -> str:
    value = cfg.get(key) or default
    if value not in options:
        raise UnsupportedLayerError(str(b.error(f"unsupported `{key}`", f"one of {options}", value)))
    return str(value)


def one_input(b: Builder, xs: list[Info], rank: int | None = None) -> Info:
    if len(xs) != 1:
        raise b.error("wrong number of inputs", "1", len(xs))
    if rank is not None and len(xs[0].shape) != rank:
        raise b.error("wrong input rank", f"rank {rank}", xs[0].shape)
    return xs[0]


def known(b: Builder, value: int | None, what: str) -> int:
    if value is None:
        raise b.error(f"unknown {what}", "a fixed size in the model's input shape", None)
    return value
