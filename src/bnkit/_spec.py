"""One description of a batch-normalization layer, shared by everything that needs one.

:class:`BNSpec` is the validated, immutable set of a BN layer's hyper-parameters in
Keras' convention (``momentum`` is the weight of the *old* moving value).  Both layer
families hold one (``bnkit.BatchNormalization`` directly, ``bnkit.BatchNorm1d/2d/3d``
derived from their torch attributes); surgery, summaries and :mod:`bnkit.keras` read it
instead of a layer's private attributes.  :meth:`BNSpec.build` resolves it against an
input shape into a :class:`BuiltBN`: the axes, rank, feature count, the moving-variance
rule and the Keras weight shape.  :meth:`BNSpec.keras_config` and
:meth:`BNSpec.from_keras_config` convert to and from the hyper-parameters of a Keras
``BatchNormalization`` config.

tf.keras 2's rules live here once: which layers take the *fused* path (and the errors it
raises for ``fused=True``), and that the fused path feeds the Bessel-corrected batch
variance to the moving variance while every other path feeds the biased one.  The
PyTorch family uses ``variance_rule="unbiased"`` (PyTorch always corrects).
"""
from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch

from ._repr import short
from ._check import check_axis, check_bool, check_epsilon, check_fraction, check_positive
from ._kernels import normalize_axes

__all__ = ["BNSpec", "BuiltBN", "Clipping"]

_FUSED_AXES = (-4, -3, -1, 1, 3, 4)  # tf.keras' construction-time allow-list
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_VARIANCE_RULES = ("keras", "unbiased", "biased")


class Clipping(NamedTuple):
    """Batch renormalization's clipping bounds, exactly as given (``None``: no bound)."""

    rmax: float | None = None
    rmin: float | None = None
    dmax: float | None = None

    @classmethod
    def create(cls, clipping: Mapping[str, Any] | None) -> "Clipping":
        """Validate a Keras ``renorm_clipping`` dict (keys rmax, rmin, dmax; values numbers or None)."""
        if clipping is None:
            return cls()
        if not isinstance(clipping, Mapping):
            raise TypeError(f"`renorm_clipping` must be a dict or None; received: {short(clipping)}")
        unknown = set(clipping) - set(cls._fields)
        if unknown:
            raise ValueError(
                f"Received invalid keys for `renorm_clipping` argument: {unknown}. "
                f"Supported values: {list(cls._fields)}."
            )
        values: dict[str, float] = {}
        for key, value in clipping.items():
            if value is None:
                continue
            if not isinstance(value, Real) or isinstance(value, bool):
                raise TypeError(f"`renorm_clipping[{short(key)}]` must be a number or None; received: {short(value)}")
            if math.isnan(value):
                raise ValueError(f"`renorm_clipping[{short(key)}]` must be a number, not NaN; received: {short(value)}")
            values[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)
        bounds = cls(**values)
        if bounds.rmin is not None and bounds.rmax is not None and bounds.rmax < bounds.rmin:
            raise ValueError(f"`renorm_clipping` needs rmax >= rmin; received: rmax={bounds.rmax}, rmin={bounds.rmin}")
        if bounds.dmax is not None and bounds.dmax < 0:
            raise ValueError(f"`renorm_clipping` needs dmax >= 0; received: dmax={bounds.dmax}")
        return bounds

    def as_dict(self) -> dict[str, float]:
        """The bounds that are set, as Keras writes them (``{"rmax": 3, "dmax": 5}``)."""
        return {key: value for key, value in self._asdict().items() if value is not None}

    def tensor(self, **like: Any) -> torch.Tensor:
        """``[rmin, rmax, dmax]`` with ``inf`` for absent bounds (what the kernel reads)."""
        rmin = -math.inf if self.rmin is None else self.rmin
        rmax = math.inf if self.rmax is None else self.rmax
        dmax = math.inf if self.dmax is None else self.dmax
        return torch.tensor([float(rmin), float(rmax), float(dmax)], **like)


@dataclasses.dataclass(frozen=True)
class BuiltBN:
    """A :class:`BNSpec` resolved against an input shape (Keras ``build``)."""

    ndim: int
    axes: tuple[int, ...]  # sorted, non-negative
    features: int  # product of the BN-axis sizes: the length of every state tensor
    fused: bool  # tf.keras' fused path
    variance_rule: str  # "biased" or "unbiased": what feeds the moving variance
    keras_weight_shape: tuple[int, ...]  # the shape Keras gives gamma/beta/moving_*


@dataclasses.dataclass(frozen=True)
class BNSpec:
    """Validated hyper-parameters of a batch-normalization layer (Keras' names and meanings).

    Create it with :meth:`create` (which validates and applies tf.keras' construction-time
    ``fused`` rules); change it with :meth:`replace`.  Fields:

    * ``axis``: the feature axis or axes (an int or a tuple; negative values allowed).
    * ``momentum``: the weight of the old moving value (PyTorch's ``momentum`` is ``1 -`` it).
    * ``epsilon``, ``center``, ``scale``: as in Keras.
    * ``renorm``, ``renorm_clipping`` (a :class:`Clipping`), ``renorm_momentum``.
    * ``fused``: ``None``/``True``/``False`` as given (after tf.keras' init rules).
    * ``virtual_batch_size``, ``adjustment``, ``synchronized``: as in Keras.
    * ``variance_rule``: ``"keras"`` (tf.keras 2: unbiased on the fused path, else biased),
      ``"unbiased"`` (PyTorch) or ``"biased"`` (Keras 3).
    """

    axis: int | tuple[int, ...] = -1
    momentum: float = 0.99
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    renorm: bool = False
    renorm_clipping: Clipping = Clipping()
    renorm_momentum: float = 0.99
    fused: bool | None = None
    virtual_batch_size: int | None = None
    adjustment: Callable[[torch.Size], Any] | None = None
    synchronized: bool = False
    variance_rule: str = "keras"

    @classmethod
    def create(cls, *, dtype: torch.dtype | None = None, **arguments: Any) -> "BNSpec":
        """Validate ``arguments`` (the field names) with tf.keras' rules and messages.

        ``dtype`` is the layer's compute dtype, which tf.keras' ``fused=True`` rule checks.
        ``renorm_clipping`` may be a dict; without ``renorm`` it is ignored, as in Keras.
        """
        unknown = set(arguments) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Unknown batch-normalization arguments: {sorted(unknown)}")
        a = {f.name: f.default for f in dataclasses.fields(cls)} | arguments
        renorm = check_bool("renorm", a["renorm"])
        vbs = a["virtual_batch_size"]
        if vbs is not None:
            vbs = check_positive("virtual_batch_size", vbs, int)
        adjustment, synchronized = a["adjustment"], check_bool("synchronized", a["synchronized"])
        if adjustment is not None and not callable(adjustment):
            raise TypeError(f"`adjustment` must be a callable or None; received: {short(adjustment)}")
        if vbs is not None and (adjustment is not None or synchronized):
            raise ValueError(
                "When using `virtual_batch_size`, adjustment cannot be specified "
                f"(nor synchronized). Received: adjustment={short(adjustment)}, synchronized={synchronized}"
            )
        if a["variance_rule"] not in _VARIANCE_RULES:
            raise ValueError(f"`variance_rule` must be one of {_VARIANCE_RULES}; received: {short(a['variance_rule'])}")
        clipping = a["renorm_clipping"]
        if not isinstance(clipping, Clipping):
            clipping = Clipping.create(clipping) if renorm else Clipping()
            if not renorm and a["renorm_clipping"] is not None and not isinstance(a["renorm_clipping"], Mapping):
                raise TypeError(f"`renorm_clipping` must be a dict or None; received: {short(a['renorm_clipping'])}")
        axis = check_axis(a["axis"])
        spec = cls(
            axis=axis, momentum=check_fraction("momentum", a["momentum"]),
            epsilon=check_epsilon("epsilon", a["epsilon"], torch.float64), center=check_bool("center", a["center"]),
            scale=check_bool("scale", a["scale"]), renorm=renorm, renorm_clipping=clipping,
            renorm_momentum=check_fraction("renorm_momentum", a["renorm_momentum"]),
            fused=None, virtual_batch_size=vbs, adjustment=adjustment, synchronized=synchronized,
            variance_rule=a["variance_rule"],
        )
        return dataclasses.replace(spec, fused=spec._fused_at_init(a["fused"], dtype or torch.get_default_dtype()))

    def replace(self, **changes: Any) -> "BNSpec":
        """A validated copy with some fields changed."""
        return BNSpec.create(**{**dataclasses.asdict(self), "renorm_clipping": self.renorm_clipping, **changes})

    # ---- tf.keras' fused rules ---------------------------------------------------------
    def _fused_at_init(self, fused: Any, dtype: torch.dtype) -> bool | None:
        """tf.keras' construction-time rules: ``None`` may become False, ``True`` may raise."""
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"`fused` must be None, True or False; received: fused={short(fused)}")
        if self.synchronized:
            if fused:
                raise ValueError("`fused=True` is not supported when `synchronized=True`.")
            return False
        axes = list(self.axis) if isinstance(self.axis, tuple) else [self.axis]
        reasons = [
            (self.renorm, "Passing both `fused=True` and `renorm=True` is not supported"),
            (len(axes) > 1 or axes[0] not in _FUSED_AXES,
             "Passing `fused=True` is only supported when axis is 1 or 3 for input rank = 4 "
             f"or 1 or 4 for input rank = 5. Got axis {axes}"),
            (self.virtual_batch_size is not None,
             "Passing `fused=True` is not supported when `virtual_batch_size` is specified. "
             f"Received: virtual_batch_size={self.virtual_batch_size}"),
            (self.adjustment is not None, "Passing `fused=True` is not supported when `adjustment` is specified."),
            (dtype not in _FUSED_DTYPES,
             "Passing `fused=True` is only supported when the compute dtype is float16, "
             f"bfloat16, or float32. Got dtype: {str(dtype).replace('torch.', '')}"),
        ]
        for failed, message in reasons:
            if failed:
                if fused:
                    raise ValueError(message)
                return False
        return fused

    def _fused_at_build(self, axes: list[int], ndim: int, shape: Sequence[int]) -> bool:
        """tf.keras' build-time rules (rank 4/5 and the data-format axis)."""
        if self.fused is False:
            return False
        if ndim not in (4, 5):
            if self.fused:
                raise ValueError(
                    "Batch normalization layers with `fused=True` only support 4D or 5D input "
                    f"tensors. Received tensor with shape: {tuple(shape)}"
                )
            return False
        if axes in ([1], [ndim - 1]):
            return True
        if ndim == 4:
            raise ValueError(
                "Unsupported axis. The use of `fused=True` is only possible with `axis=1` or "
                f"`axis=3` for 4D input tensors. Received: axis={tuple(axes)}"
            )
        return False

    # ---- build -------------------------------------------------------------------------
    def build(self, shape: Sequence[int]) -> BuiltBN:
        """Resolve against an input shape: axes, feature count, fused path, variance rule."""
        ndim = len(shape)
        if ndim == 0:
            raise ValueError("Input has undefined rank. Received: input_shape=() (a scalar)")
        try:
            axes = normalize_axes(list(self.axis) if isinstance(self.axis, tuple) else self.axis, ndim)
        except ValueError as error:
            if isinstance(self.axis, int) and self.axis >= ndim:  # BatchNormalization(64) as a norm_layer
                raise ValueError(f"{error}. `axis={self.axis}` looks like a channel count: PyTorch-style "
                                 "`norm_layer(num_features)` code wants bnkit.BatchNorm2d") from None
            raise
        if self.virtual_batch_size is not None and 0 in axes:
            raise ValueError(
                "When using `virtual_batch_size`, the batch dimension must be 0 and thus axis "
                f"cannot include 0. Received axis={self.axis}"
            )
        features = math.prod([int(shape[a]) for a in axes])
        fused = self._fused_at_build(axes, ndim, shape)
        rule = self.variance_rule
        if rule == "keras":
            rule = "unbiased" if fused else "biased"
        keras_shape: tuple[int, ...] = (features,)
        if len(axes) > 1 or self.virtual_batch_size is not None:
            full = [int(shape[d]) if d in axes else 1 for d in range(ndim)]
            if self.virtual_batch_size is not None:
                full.insert(1, 1)
            keras_shape = tuple(full)
        return BuiltBN(ndim, tuple(axes), features, fused, rule, keras_shape)

    # ---- Keras configs -----------------------------------------------------------------
    def keras_config(self) -> dict[str, Any]:
        """The BN hyper-parameters as a Keras ``BatchNormalization`` config writes them.

        ``axis`` is this spec's own (callers map it to Keras' layout); the initializers,
        regularizers and constraints belong to the layer, not to the spec.
        """
        config: dict[str, Any] = {
            "axis": list(self.axis) if isinstance(self.axis, tuple) else self.axis,
            "momentum": self.momentum, "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
        }
        if self.renorm:
            config.update(renorm=True, renorm_clipping=self.renorm_clipping.as_dict(),
                          renorm_momentum=self.renorm_momentum)
        if self.virtual_batch_size is not None:
            config["virtual_batch_size"] = self.virtual_batch_size
        if self.synchronized:
            config["synchronized"] = True
        return config

    @classmethod
    def from_keras_config(cls, config: Mapping[str, Any], **overrides: Any) -> "BNSpec":
        """The spec of a Keras ``BatchNormalization`` config (Keras' defaults for absent keys).

        ``overrides`` replace config values (e.g. an ``axis`` mapped to another layout).
        """
        renorm = config.get("renorm", False) is True
        arguments = {
            "axis": config.get("axis", -1), "momentum": config.get("momentum", 0.99),
            "epsilon": config.get("epsilon", 1e-3), "center": config.get("center", True),
            "scale": config.get("scale", True), "renorm": renorm,
            "renorm_clipping": config.get("renorm_clipping") if renorm else None,
            "renorm_momentum": config.get("renorm_momentum", 0.99), "fused": config.get("fused"),
            "virtual_batch_size": config.get("virtual_batch_size"),
            "synchronized": config.get("synchronized", False) is True,
        }
        return cls.create(**{**arguments, **overrides})
