"""Weight initializers mirroring ``tf.keras.initializers`` (tf_keras 2.21), in pure PyTorch.

:func:`get` resolves what Keras accepts (names, config dicts, instances, callables) to an
:class:`Initializer`: ``init(shape, dtype=torch.float32, device=None, generator=None) -> Tensor``.
Random initializers draw from ``generator`` if given, else from a fresh generator seeded with
``seed`` (so a seeded initializer repeats its values, like Keras'), else from torch's global RNG;
draws are made in float32 (float64 for float64), then cast. Fans and scales follow Keras exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from ._repr import short
from ._registry import KerasObject, Registry, UserCallable, check_number

__all__ = [  # noqa: RUF022 (grouped by kind)
    "Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
    "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
    "compute_fans", "get", "serialize",
]

Shape = tuple[int, ...]
Device = torch.device | str | int | None
Gen = torch.Generator | None

# Standard deviation of a unit normal truncated to [-2, 2] (the constant Keras divides by).
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, exactly as Keras' ``_compute_fans``."""
    shape = tuple(shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    receptive_field = math.prod(shape[:-2])
    return int(shape[-2] * receptive_field), int(shape[-1] * receptive_field)


def _as_shape(shape: Sequence[int]) -> Shape:
    if isinstance(shape, Sequence) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return tuple(shape)
    raise ValueError(f"Invalid `shape`: expected a sequence of non-negative ints; received: shape={short(shape)}.")


def _check_seed(seed: int | None) -> int | None:
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    raise ValueError(f"Invalid `seed`: expected an int or None; received: seed={short(seed)}.")


class Initializer(KerasObject):
    """Base class: ``init(shape, dtype, device, generator)`` returns a new tensor."""

    def __call__(
        self, shape: Sequence[int], dtype: torch.dtype = torch.float32, device: Device = None, generator: Gen = None
    ) -> torch.Tensor:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"Invalid `dtype`: expected a torch.dtype; received: dtype={short(dtype)}.")
        return self._generate(_as_shape(shape), dtype, device, generator)

    def _generate(self, shape: Shape, dtype: torch.dtype, device: Device, gen: Gen) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement `_generate`.")


class _Fill(Initializer):
    value: float

    def _generate(self, shape: Shape, dtype: torch.dtype, device: Device, gen: Gen) -> torch.Tensor:
        if not dtype.is_floating_point and torch.tensor(self.value).to(dtype).item() != self.value:  # cf. tf.constant
            raise ValueError(f"Invalid `dtype` for {self!r}: expected one that holds the value; received: {dtype}.")
        return torch.full(shape, self.value, dtype=dtype, device=device)


class Zeros(_Fill):
    """All zeros."""
    value = 0


class Ones(_Fill):
    """All ones."""
    value = 1


class Constant(_Fill):
    """Every element equal to the Python scalar ``value``."""
    _config_keys = ("value",)

    def __init__(self, value: float = 0) -> None:
        if not isinstance(value, numbers.Real):
            raise ValueError(f"Invalid `value`: expected a Python scalar; received: value={short(value)}.")
        self.value = value.item() if hasattr(value, "item") else value


class _Random(Initializer):
    """Draws ``loc + scale * z``, ``z`` uniform on [0, 1), normal, or normal truncated to [-2, 2]."""

    seed: int | None = None

    def _params(self, shape: Shape) -> tuple[str, float, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement `_params`.")

    def _generate(self, shape: Shape, dtype: torch.dtype, device: Device, gen: Gen) -> torch.Tensor:
        kind, loc, scale = self._params(shape)
        return self._standard(kind, shape, dtype, device, gen).mul_(scale).add_(loc).to(dtype=dtype, device=device)

    def _standard(self, kind: str, shape: Shape, dtype: torch.dtype, device: Device, gen: Gen) -> torch.Tensor:
        if not dtype.is_floating_point:
            raise ValueError(
                f"Invalid `dtype` for {type(self).__name__}: expected a floating point dtype; received: {dtype}."
            )
        if gen is None and self.seed is not None:
            gen = torch.Generator().manual_seed(self.seed)
        work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.empty(shape, dtype=work, device=gen.device if gen is not None else device)
        if kind == "uniform":
            return z.uniform_(0.0, 1.0, generator=gen)
        if kind == "untruncated_normal":
            return z.normal_(0.0, 1.0, generator=gen)
        return torch.nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=gen)


class _MeanStddev(_Random):
    _kind: str
    _config_keys = ("mean", "stddev", "seed")

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        self.mean, self.stddev = check_number(mean, "mean"), check_number(stddev, "stddev")
        self.seed = _check_seed(seed)

    def _params(self, shape: Shape) -> tuple[str, float, float]:
        return self._kind, self.mean, self.stddev


class RandomNormal(_MeanStddev):
    """Normal distribution ``N(mean, stddev**2)``."""
    _kind = "untruncated_normal"


class TruncatedNormal(_MeanStddev):
    """Normal distribution with values beyond two ``stddev`` from ``mean`` re-drawn."""
    _kind = "truncated_normal"


class RandomUniform(_Random):
    """Uniform distribution on ``[minval, maxval)``."""
    _config_keys = ("minval", "maxval", "seed")

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None) -> None:
        self.minval, self.maxval = check_number(minval, "minval"), check_number(maxval, "maxval")
        self.seed = _check_seed(seed)

    def _params(self, shape: Shape) -> tuple[str, float, float]:
        return "uniform", self.minval, self.maxval - self.minval


class VarianceScaling(_Random):
    """Variance ``scale / n`` with ``n`` = fan_in, fan_out or their mean (``mode``).

    ``distribution``: ``"truncated_normal"`` (alias ``"normal"``; cut at two stddev, the
    stddev before the cut is ``sqrt(scale / n) / 0.8796...``), ``"untruncated_normal"``
    (stddev ``sqrt(scale / n)``) or ``"uniform"`` (on ``[-limit, limit)``, ``limit = sqrt(3 * scale / n)``).
    """
    _config_keys: tuple[str, ...] = ("scale", "mode", "distribution", "seed")
    _MODES = ("fan_in", "fan_out", "fan_avg")
    _DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(
        self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal", seed: int | None = None
    ) -> None:
        if check_number(scale, "scale") <= 0:
            raise ValueError(f"Invalid `scale`: expected a positive number; received: scale={short(scale)}.")
        if mode not in self._MODES:
            raise ValueError(f"Invalid `mode`: expected one of {self._MODES}; received: mode={short(mode)}.")
        dist = {"normal": "truncated_normal"}.get(str(distribution).lower(), str(distribution).lower())
        if dist not in self._DISTRIBUTIONS:
            raise ValueError(
                f"Invalid `distribution`: expected one of {self._DISTRIBUTIONS} or 'normal'; "
                f"received: distribution={short(distribution)}."
            )
        self.scale, self.mode, self.distribution, self.seed = scale, mode, dist, _check_seed(seed)

    def sampling_params(self, shape: Sequence[int]) -> tuple[str, float]:
        """``(distribution, value)`` Keras samples with for ``shape``: ``value`` is the stddev before
        truncation (``"truncated_normal"``), the stddev (``"untruncated_normal"``) or ``limit`` (``"uniform"``)."""
        fan_in, fan_out = compute_fans(_as_shape(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return self.distribution, math.sqrt(scale) / TRUNCATED_NORMAL_STDDEV
        if self.distribution == "untruncated_normal":
            return self.distribution, math.sqrt(scale)
        return self.distribution, math.sqrt(3.0 * scale)

    def _params(self, shape: Shape) -> tuple[str, float, float]:
        dist, value = self.sampling_params(shape)
        return (dist, -value, 2.0 * value) if dist == "uniform" else (dist, 0.0, value)


class _Preset(VarianceScaling):
    """A :class:`VarianceScaling` with fixed ``(scale, mode, distribution)``; only the seed is configurable."""
    _preset: tuple[float, str, str]
    _config_keys = ("seed",)

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(*self._preset, seed=seed)


class GlorotUniform(_Preset):
    """Uniform on ``[-limit, limit)``, ``limit = sqrt(6 / (fan_in + fan_out))``."""
    _preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    """Truncated normal with stddev (after truncation) ``sqrt(2 / (fan_in + fan_out))``."""
    _preset = (1.0, "fan_avg", "truncated_normal")


class HeNormal(_Preset):
    """Truncated normal with stddev (after truncation) ``sqrt(2 / fan_in)``."""
    _preset = (2.0, "fan_in", "truncated_normal")


class HeUniform(_Preset):
    """Uniform on ``[-limit, limit)``, ``limit = sqrt(6 / fan_in)``."""
    _preset = (2.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    """Truncated normal with stddev (after truncation) ``sqrt(1 / fan_in)``."""
    _preset = (1.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    """Uniform on ``[-limit, limit)``, ``limit = sqrt(3 / fan_in)``."""
    _preset = (1.0, "fan_in", "uniform")


class _CallableInitializer(UserCallable, Initializer):
    """A user callable ``fn(shape, dtype=dtype)``; its result must be a tensor of ``shape``."""

    def _generate(self, shape: Shape, dtype: torch.dtype, device: Device, gen: Gen) -> torch.Tensor:
        result = self.fn(shape, dtype=dtype)
        if not isinstance(result, torch.Tensor) or tuple(result.shape) != shape:
            self._fail(result, f"a torch.Tensor of shape {shape}")
        return result.to(dtype=dtype, device=device)


_CLASSES: dict[str, type[Initializer]] = {
    "zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal, "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform, "he_normal": HeNormal, "he_uniform": HeUniform,
}
_NAMES: dict[str, type[Initializer]] = {}
for _snake, _cls in _CLASSES.items():  # the aliases tf_keras 2.21 registers
    _NAMES.update({_snake: _cls, _cls.__name__: _cls, _cls.__name__ + "V2": _cls})
    if issubclass(_cls, _Preset):
        _NAMES[_snake + "V2"] = _cls
_NAMES.update(normal=RandomNormal, uniform=RandomUniform, one=Ones, zero=Zeros)

_REGISTRY: Registry[Initializer] = Registry(
    "initializer", "keras.initializers", Initializer, _NAMES, sorted(_CLASSES), _CallableInitializer,
    ignored_config_keys=frozenset({"dtype"}),
)


def get(identifier: Any, *, arg_name: str = "identifier") -> Initializer:
    """Resolve a Keras initializer identifier (name, config dict, instance, class or callable).

    ``arg_name`` names the argument in error messages (e.g. ``"beta_initializer"``).
    """
    return _REGISTRY.get(identifier, arg_name)


def serialize(initializer: Initializer | None) -> dict[str, Any] | None:
    """The Keras serialisation ``{"module", "class_name", "config", "registered_name"}``."""
    return _REGISTRY.serialize(initializer)
