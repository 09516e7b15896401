"""Read Keras layer-config values with validation and tf_keras-style messages.

Each reader takes the :class:`~bnkit.keras._build.Builder` (for the layer name in errors),
the layer config, the key and a default; a wrong value raises KerasFormatError saying what
was expected and what was received.  Also here: the pieces every layer config shares
(:func:`common`, :func:`data_format`, :func:`activation_name`, :func:`initializer`,
:func:`training_only`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .. import initializers
from .._repr import short
from ._build import Builder, Info
from ._config import LayerSpec
from ._layers import ACTIVATIONS
from .errors import UnsupportedLayerError

__all__ = ["ACTIVATION_TYPES", "TRAINING_ONLY", "activation_name", "activation_of", "axis_option", "bool_option",
           "choice", "common", "data_format", "drop_nones", "float_option", "initializer", "int_option", "is_int",
           "known", "one_input", "pair", "training_only"]

#: Config keys that only matter to Keras' training loop (noted, not applied, not written back).
TRAINING_ONLY = ("kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
                 "bias_constraint")


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


def axis_option(b: Builder, value: Any, rank: int) -> int:
    """A Keras ``axis`` (an int or tf_keras' one-element list) as a non-negative axis."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not is_int(value) or not -rank <= value < rank:
        raise b.error("invalid `axis`", f"an int in [{-rank}, {rank})", value)
    return int(value) % rank


def common(spec: LayerSpec) -> dict[str, Any]:
    """The config keys every written layer has: name, trainable, dtype."""
    return {"name": spec.name, "trainable": spec.config.get("trainable", True) is not False, "dtype": "float32"}


def data_format(b: Builder, cfg: dict[str, Any]) -> str:
    return choice(b, cfg, "data_format", ("channels_last", "channels_first"), "channels_last")


def activation_name(b: Builder, value: Any, glu: bool = False) -> str:
    """A built-in Keras activation name (``"linear"`` for None); anything else is refused.

    ``glu``: whether Keras 3's ``glu`` is taken (it halves the last axis; the layers that
    say so, ``Dense`` and ``Activation`` of a Keras 3 config, compute their output shape
    with it); elsewhere it is refused like any unknown name, as tf_keras 2, which has no
    ``glu``, refuses it."""
    if isinstance(value, dict) and isinstance(value.get("config"), str) and \
            str(value.get("module", "keras.activations")).split(".")[0] in ("keras", "tf_keras", "builtins"):
        value = value["config"]
    if value is None or value == "linear":
        return "linear"
    if glu and value == "glu":
        return value
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise UnsupportedLayerError(str(b.error("unsupported activation", f"one of {['linear', *ACTIVATIONS]}", value)))
    return value


def initializer(b: Builder, cfg: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The serialised Keras initializer of ``key``, None (with a note) if bnkit lacks it."""
    raw = cfg.get(key)
    if raw is None:
        return None
    for candidate in (raw, drop_nones(raw)):
        try:
            return initializers.serialize(initializers.get(candidate))
        except (ValueError, TypeError):
            continue
    b.note(f"`{key}` {short(raw)} is not available in bnkit; Keras' default is written instead")
    return None


def drop_nones(raw: Any) -> Any:
    """A serialised Keras object without its null config entries (tf_keras writes ``seed: null``)
    and without the ``shared_object_id`` tf_keras adds to an object several layers share."""
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        return {**{k: v for k, v in raw.items() if k != "shared_object_id"},
                "config": {k: v for k, v in raw["config"].items() if v is not None}}
    return raw


def training_only(b: Builder, cfg: dict[str, Any], keys: tuple[str, ...] = TRAINING_ONLY) -> None:
    """Note every set key of ``keys``: it has no effect in torch."""
    for key in keys:
        if cfg.get(key) is not None:
            b.note(f"`{key}` {short(cfg[key])} has no effect in torch (not applied, not written back)")


_ELEMENTWISE = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SELU: "selu", nn.Softsign: "softsign",
                nn.SiLU: "swish", nn.ReLU6: "relu6"}
#: Torch modules that may equal a Keras activation (see :func:`activation_of`).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (*_ELEMENTWISE, nn.Softmax, nn.ELU, nn.GELU, nn.Softplus)


def activation_of(module: nn.Module | None) -> str | None:
    """The Keras activation equal to ``module`` on a channels-first tensor, or None."""
    if isinstance(module, nn.Softmax) and module.dim == 1:  # torch channels = Keras' last axis
        return "softmax"
    if isinstance(module, nn.ELU) and module.alpha == 1.0:
        return "elu"
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return "gelu"
    if isinstance(module, nn.Softplus) and module.beta == 1.0:
        return "softplus"
    return next((name for kind, name in _ELEMENTWISE.items() if type(module) is kind), None)
