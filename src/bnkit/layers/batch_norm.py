"""``BatchNormalization``: tf.keras 2 semantics as a PyTorch module."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from .. import constraints, initializers, regularizers
from .. import functional as F
from .._check import check_bool, check_epsilon, check_positive
from .._spec import BNSpec, BuiltBN
from ._common import BNExtras, flat_state, fx_leaf, renorm_state, store_stats

__all__ = ["BatchNormalization", "KERAS_WEIGHT_NAMES"]

#: Keras weight name -> torch state name, in Keras' weight order.
KERAS_WEIGHT_NAMES: dict[str, str] = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "moving_stddev": "running_stddev",
    "renorm_mean": "renorm_mean",
    "renorm_stddev": "renorm_stddev",
}


class BatchNormalization(BNExtras, LazyModuleMixin, nn.Module):
    r"""Batch normalization with every tf.keras 2 ``BatchNormalization`` argument.

    Arguments keep Keras' names, meaning and defaults (``momentum=0.99`` is the weight of
    the *old* moving value, ``epsilon=1e-3``, ``axis=-1``); state keeps PyTorch's names
    (``weight``, ``bias``, ``running_mean``, ``running_var``, and for renorm
    ``running_stddev``, ``renorm_mean``, ``renorm_stddev``), all flat ``(C,)`` with ``C``
    the product of the BN-axis sizes.  The Keras names (``gamma``, ``moving_mean``...) are
    read-only aliases of the same tensors.

    The layer is built on its first input, as in Keras; pass ``num_features`` to create the
    state at once.  ``forward(x, training=None, mask=None)``: ``training=None`` follows
    ``module.training``; ``trainable=False`` freezes gamma/beta *and* forces inference
    statistics (tf.keras 2).

    ``load_state_dict`` accepts this layer's own keys, Keras names (``gamma``, ``moving_mean``...
    in flat or Keras shape) and a ``torch.nn.BatchNorm*`` state (its ``num_batches_tracked``
    is dropped).  ``epsilon`` is not part of any state_dict: PyTorch's layers use 1e-5, so
    build the layer with ``epsilon=1e-5`` to keep a PyTorch model's outputs (the default 1e-3
    changes them by about 1e-3 on unit-scale data, and no load can notice).

    ``synchronized=True`` computes the batch statistics over every process of
    ``process_group`` (default: the world of ``torch.distributed``, any backend): one
    all-reduce of ``2C+1`` numbers forward and one of ``2C`` backward, none with a single
    process or in inference.  As in tf.keras it forces the non-fused path, so the moving
    variance is fed the *biased* variance of the global batch.  Ghost batches are per process
    by definition and cannot be synchronized.

    ``fused`` does not select a different kernel (the same kernels run whatever it says); it
    keeps tf.keras' resolution rules and errors and its moving-variance rule: the fused path
    (4-D/5-D input, channels-first or channels-last axis) feeds the Bessel-corrected batch
    variance to ``running_var``, every other path the biased one.
    """

    _version = 1
    cls_to_become = None
    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        axis: int | Sequence[int] = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        renorm: bool = False,
        renorm_clipping: Mapping[str, float] | None = None,
        renorm_momentum: float = 0.99,
        fused: bool | None = None,
        trainable: bool = True,
        virtual_batch_size: int | None = None,
        adjustment: Callable[[torch.Size], tuple[Tensor, Tensor]] | None = None,
        synchronized: bool = False,
        *,
        num_features: int | None = None,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self._spec = BNSpec.create(
            axis=axis, momentum=momentum, epsilon=epsilon, center=center, scale=scale, renorm=renorm,
            renorm_clipping=renorm_clipping, renorm_momentum=renorm_momentum, fused=fused,
            virtual_batch_size=virtual_batch_size, adjustment=adjustment, synchronized=synchronized,
            dtype=factory["dtype"],
        )
        check_epsilon("epsilon", epsilon, factory["dtype"])  # the spec checks it against float32 only
        self.process_group = process_group
        self.initializers = {
            "beta": initializers.get(beta_initializer),
            "gamma": initializers.get(gamma_initializer),
            "moving_mean": initializers.get(moving_mean_initializer),
            "moving_variance": initializers.get(moving_variance_initializer),
        }
        self.regularizers = {"gamma": regularizers.get(gamma_regularizer), "beta": regularizers.get(beta_regularizer)}
        self.constraints = {"gamma": constraints.get(gamma_constraint), "beta": constraints.get(beta_constraint)}
        self.built: BuiltBN | None = None
        if num_features is not None:
            num_features = check_positive("num_features", num_features, int)
        self.num_features = num_features
        self._create_state(num_features, factory)
        self.register_buffer(
            "_clipping", self._spec.renorm_clipping.tensor(device=device) if self.renorm else None, persistent=False
        )
        self._trainable = True
        self.trainable = check_bool("trainable", trainable)
        if num_features is not None:
            self.reset_parameters()

    spec = property(lambda self: self._spec, doc="This layer's hyper-parameters as a :class:`~bnkit.BNSpec`.")
    axis = property(lambda self: list(a) if isinstance(a := self._spec.axis, tuple) else a, doc="Keras `axis`.")
    momentum = property(lambda self: self._spec.momentum, doc="Weight of the old moving value (Keras).")
    epsilon = property(lambda self: self._spec.epsilon)
    center = property(lambda self: self._spec.center)
    scale = property(lambda self: self._spec.scale)
    renorm = property(lambda self: self._spec.renorm)
    renorm_momentum = property(lambda self: self._spec.renorm_momentum)
    virtual_batch_size = property(lambda self: self._spec.virtual_batch_size)
    adjustment = property(lambda self: self._spec.adjustment)
    synchronized = property(lambda self: self._spec.synchronized)
    fused = property(lambda self: self.built.fused if self.built else self._spec.fused,
                     doc="tf.keras' fused path: resolved on build (None before, if not given).")

    # ---- state -------------------------------------------------------------------------
    def _create_state(self, size: int | None, factory: dict[str, Any]) -> None:
        def param(on: bool) -> nn.Parameter | None:
            if not on:
                return None
            return nn.Parameter(torch.empty(size, **factory)) if size else UninitializedParameter(**factory)

        def buffer() -> Tensor:
            return torch.empty(size, **factory) if size else UninitializedBuffer(**factory)

        self.weight = param(self.scale)
        self.bias = param(self.center)
        self.register_buffer("running_mean", buffer())
        self.register_buffer("running_var", buffer())
        for name in ("running_stddev", "renorm_mean", "renorm_stddev"):
            self.register_buffer(name, buffer() if self.renorm else None)

    def initialize_parameters(self, x: Tensor, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Build on the first input: resolve the axes and create the state (Keras ``build``)."""
        if isinstance(x, torch.fx.Proxy):  # the layer builds on its first real call
            if not self.has_uninitialized_params():
                return
            raise TypeError(
                "torch.fx cannot trace an unbuilt BatchNormalization: expected a layer built with "
                "`num_features=...` or by one call on real data before tracing; received an unbuilt layer"
            )
        self._build(x)
        if self.has_uninitialized_params():
            with torch.no_grad():
                for name, tensor in list(self.named_parameters(recurse=False)) + list(self.named_buffers(recurse=False)):
                    if isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
                        tensor.materialize((self.built.features,))  # type: ignore[union-attr]
                self.num_features = self.built.features  # type: ignore[union-attr]
                self.reset_parameters()

    def _build(self, x: Tensor) -> None:
        built = self._spec.build(x.shape)
        if self.num_features is not None and built.features != self.num_features:
            raise ValueError(
                f"Input 0 of layer is incompatible: expected {self.num_features} features on axis "
                f"{self.axis}; received an input of shape {tuple(x.shape)}"
            )
        if self.num_features is None and self._spec.axis == -1 and _looks_channels_first(x.shape):
            warnings.warn(
                f"BatchNormalization(axis=-1) is normalising the last dimension ({x.shape[-1]} features) of "
                f"an input of shape {tuple(x.shape)}, which looks channels-first (NCHW); pass axis=1 for "
                "NCHW input, or use bnkit.BatchNorm2d (PyTorch's signature, e.g. as `norm_layer=`)",
                stacklevel=3,
            )
        self.built = built

    def reset_running_stats(self) -> None:
        if self.has_uninitialized_params():
            return
        with torch.no_grad():
            self.running_mean.copy_(self._initial("moving_mean"))
            self.running_var.copy_(self._initial("moving_variance"))
            if self.renorm:
                self.running_stddev.copy_(self._initial("moving_variance").sqrt())
                self.renorm_mean.copy_(self._initial("moving_mean"))
                self.renorm_stddev.copy_(self._initial("moving_variance").sqrt())

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.has_uninitialized_params():
            return
        with torch.no_grad():
            for name, tensor in (("gamma", self.weight), ("beta", self.bias)):
                if tensor is not None:
                    tensor.copy_(self._initial(name))

    @property
    def keras_weight_shape(self) -> tuple[int, ...] | None:
        """The shape Keras gives every weight of this layer (None until built)."""
        return self.built.keras_weight_shape if self.built else None

    def _initial(self, name: str) -> Tensor:
        shape = self.keras_weight_shape or (self.running_mean.numel(),)
        value = self.initializers[name](tuple(shape), dtype=self.running_mean.dtype, device=self.running_mean.device)
        return value.reshape(-1)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: Tensor, training: bool | None = None, mask: Tensor | None = None) -> Tensor:
        if isinstance(x, torch.fx.Proxy):
            return fx_leaf(self, x, training=training, mask=mask)
        if self.built is None:
            self._build(x)
        built = self.built
        if not torch.jit.is_tracing():
            self._check_input(x, built)
        training = bool(self.training if training is None else training) and self._trainable
        if mask is not None and built.fused:
            warnings.warn("The fused batch-normalization path ignores `mask` (as tf.keras does).", stacklevel=2)
            mask = None
        out, stats = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=training, axis=built.axes, momentum=self.momentum, epsilon=self.epsilon,
            variance_rule=built.variance_rule, renorm=renorm_state(self, self.renorm_momentum) if self.renorm else None,
            virtual_batch_size=self.virtual_batch_size, adjustment=self.adjustment, mask=mask,
            synchronized=self.synchronized, process_group=self.process_group,
        )
        if training:
            store_stats(self, stats)
        return out

    def _check_input(self, x: Tensor, built: BuiltBN) -> None:
        if x.dim() != built.ndim:
            raise ValueError(
                f"Input 0 of layer is incompatible with the layer: expected ndim={built.ndim}, "
                f"found ndim={x.dim()}. Full shape received: {tuple(x.shape)}"
            )
        size = math.prod([x.shape[a] for a in built.axes])
        if size != self.running_mean.numel():
            raise ValueError(
                f"Input 0 of layer is incompatible with the layer: expected axis {self.axis} of input "
                f"shape to have value {self.running_mean.numel()}. Full shape received: {tuple(x.shape)}"
            )

    # ---- Keras-style extras ------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """False freezes gamma/beta and makes every call use the moving statistics."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = check_bool("trainable", value)
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad = value

    gamma = property(lambda self: self.weight, doc="Keras name of ``weight`` (same tensor).")
    beta = property(lambda self: self.bias, doc="Keras name of ``bias`` (same tensor).")
    moving_mean = property(lambda self: self.running_mean, doc="Keras name of ``running_mean``.")
    moving_variance = property(lambda self: self.running_var, doc="Keras name of ``running_var``.")
    moving_stddev = property(lambda self: self.running_stddev, doc="Keras name of ``running_stddev`` (renorm).")

    def extra_repr(self) -> str:
        options = {
            "renorm": self.renorm, "renorm_clipping": self.renorm_clipping if self.renorm else None,
            "renorm_momentum": self.renorm_momentum if self.renorm else None,
            "virtual_batch_size": self.virtual_batch_size, "adjustment": self.adjustment,
            "synchronized": self.synchronized, "trainable": self._trainable,
        }
        defaults = {"renorm": False, "synchronized": False, "trainable": True}
        extras = "".join(f", {k}={v!r}" for k, v in options.items() if v is not None and v != defaults.get(k))
        return (f"{self.num_features}, axis={self.axis}, momentum={self.momentum}, epsilon={self.epsilon}, "
                f"center={self.center}, scale={self.scale}, fused={self.fused}{extras}")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Version 1 is the first format.  Keras-named entries (gamma, moving_mean, ...), in
        # flat or Keras (1, ..., C) shape, are accepted and renamed; a torch BN's
        # num_batches_tracked has no meaning here and is dropped.
        flat_state(state_dict, prefix, KERAS_WEIGHT_NAMES)
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _looks_channels_first(shape: torch.Size) -> bool:
    """A 4-D/5-D shape whose trailing dims look spatial (equal) while NHWC's would not be."""
    if len(shape) not in (4, 5):
        return False
    first_spatial, last_spatial = set(shape[2:]), set(shape[1:-1])
    return len(first_spatial) == 1 and len(last_spatial) > 1
