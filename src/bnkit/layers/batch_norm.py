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
from . import _bn_options as opt

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


class BatchNormalization(LazyModuleMixin, nn.Module):
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
        self.axis = opt.check_axis(axis)
        self.momentum = opt.check_fraction("momentum", momentum)
        self.epsilon = opt.check_positive("epsilon", epsilon)
        self.center = opt.check_bool("center", center)
        self.scale = opt.check_bool("scale", scale)
        self.renorm = opt.check_bool("renorm", renorm)
        self.renorm_momentum = opt.check_fraction("renorm_momentum", renorm_momentum)
        self.synchronized = opt.check_bool("synchronized", synchronized)
        if virtual_batch_size is not None:
            virtual_batch_size = opt.check_positive("virtual_batch_size", virtual_batch_size, int)
        if adjustment is not None and not callable(adjustment):
            raise TypeError(f"`adjustment` must be a callable or None; received: {adjustment!r}")
        if virtual_batch_size is not None and (adjustment is not None or synchronized):
            raise ValueError(
                "When using `virtual_batch_size`, adjustment cannot be specified "
                f"(nor synchronized). Received: adjustment={adjustment!r}, synchronized={synchronized}"
            )
        self.virtual_batch_size = virtual_batch_size
        self.adjustment = adjustment
        self.process_group = process_group
        self.fused = opt.resolve_fused_at_init(
            fused, self.axis, self.renorm, virtual_batch_size, adjustment, factory["dtype"], synchronized
        )
        self.initializers = {
            "beta": initializers.get(beta_initializer),
            "gamma": initializers.get(gamma_initializer),
            "moving_mean": initializers.get(moving_mean_initializer),
            "moving_variance": initializers.get(moving_variance_initializer),
        }
        self.regularizers = {"gamma": regularizers.get(gamma_regularizer), "beta": regularizers.get(beta_regularizer)}
        self.constraints = {"gamma": constraints.get(gamma_constraint), "beta": constraints.get(beta_constraint)}
        self._ndim: int | None = None
        self._axes: list[int] = []
        self.keras_weight_shape: tuple[int, ...] | None = None
        if num_features is not None:
            num_features = opt.check_positive("num_features", num_features, int)
        self.num_features = num_features
        self._create_state(num_features, factory)
        clipping = opt.check_clipping(renorm_clipping, self.renorm)  # ignored without renorm, as in Keras
        self.register_buffer(
            "_clipping", F.clipping_tensor(clipping, device=device) if self.renorm else None, persistent=False
        )
        self._trainable = True
        self.trainable = opt.check_bool("trainable", trainable)
        if num_features is not None:
            self.reset_parameters()

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
        self._build(x)
        if self.has_uninitialized_params():
            size = math.prod([x.shape[a] for a in self._axes])
            with torch.no_grad():
                for name, tensor in list(self.named_parameters(recurse=False)) + list(self.named_buffers(recurse=False)):
                    if isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
                        tensor.materialize((size,))
                self.num_features = size
                self.reset_parameters()

    def _build(self, x: Tensor) -> None:
        ndim = x.dim()
        axes = opt.build_axes(self.axis, ndim, self.virtual_batch_size)
        size = math.prod([x.shape[a] for a in axes])
        if self.num_features is not None and size != self.num_features:
            raise ValueError(
                f"Input 0 of layer is incompatible: expected {self.num_features} features on axis "
                f"{self.axis}; received an input of shape {tuple(x.shape)}"
            )
        self.fused = opt.resolve_fused_at_build(self.fused, axes, ndim, x.shape)
        self._ndim, self._axes = ndim, axes
        shape = [x.shape[d] if d in axes else 1 for d in range(ndim)]
        if self.virtual_batch_size is not None:
            shape.insert(1, 1)
        self.keras_weight_shape = (size,) if len(axes) == 1 and self.virtual_batch_size is None else tuple(shape)

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

    def _initial(self, name: str) -> Tensor:
        shape = self.keras_weight_shape or (self.running_mean.numel(),)
        value = self.initializers[name](tuple(shape), dtype=self.running_mean.dtype, device=self.running_mean.device)
        return value.reshape(-1)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: Tensor, training: bool | None = None, mask: Tensor | None = None) -> Tensor:
        if self._ndim is None:
            self._build(x)
        self._check_input(x)
        training = bool(self.training if training is None else training) and self._trainable
        if mask is not None and self.fused:
            warnings.warn("The fused batch-normalization path ignores `mask` (as tf.keras does).", stacklevel=2)
            mask = None
        renorm = None
        if self.renorm:
            renorm = F.RenormState(self.running_stddev, self.renorm_mean, self.renorm_stddev, self.renorm_momentum, self._clipping)
        out, stats = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=training, axis=self._axes, momentum=self.momentum, epsilon=self.epsilon,
            variance_rule="unbiased" if self.fused else "biased", renorm=renorm,
            virtual_batch_size=self.virtual_batch_size, adjustment=self.adjustment, mask=mask,
            synchronized=self.synchronized, process_group=self.process_group,
        )
        if training:  # the new statistics are detached: the copy records nothing for autograd
            buffers = self._buffers
            pairs = [(buffers[name], value) for name, value in zip(_STATE, stats) if value is not None]
            torch._foreach_copy_([target for target, _ in pairs], [value for _, value in pairs])
        return out

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != self._ndim:
            raise ValueError(
                f"Input 0 of layer is incompatible with the layer: expected ndim={self._ndim}, "
                f"found ndim={x.dim()}. Full shape received: {tuple(x.shape)}"
            )
        size = math.prod([x.shape[a] for a in self._axes])
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
        self._trainable = opt.check_bool("trainable", value)
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad = value

    @property
    def renorm_clipping(self) -> dict[str, float]:
        """The current clipping bounds; change them with :meth:`set_renorm_clipping`."""
        if self._clipping is None:
            return {}
        rmin, rmax, dmax = self._clipping.tolist()
        bounds = {"rmax": rmax, "rmin": rmin, "dmax": dmax}
        return {k: v for k, v in bounds.items() if math.isfinite(v)}

    def set_renorm_clipping(self, **bounds: float | None) -> None:
        """Change ``rmax``/``rmin``/``dmax`` during training (the paper's relaxation schedule).

        Keys not given keep their value; ``None`` removes a bound.  No recompilation is
        needed under ``torch.compile``: the bounds live in a tensor.
        """
        if self._clipping is None:
            raise ValueError(f"`renorm_clipping` applies only with `renorm=True`; this layer has renorm={self.renorm}")
        merged: dict[str, float | None] = {**self.renorm_clipping, **bounds}
        values = opt.check_clipping(merged, renorm=True)
        with torch.no_grad():
            self._clipping.copy_(F.clipping_tensor(values))

    def regularization_loss(self) -> Tensor:
        """Sum of the gamma/beta penalties (Keras ``layer.losses``); add it to the loss.

        As in tf.keras 2 a frozen layer (``trainable=False``) still reports its penalties
        (Keras 3 reports none); they carry no gradient then.
        """
        total = self.running_mean.new_zeros(())
        for name, tensor in (("gamma", self.weight), ("beta", self.bias)):
            reg = self.regularizers[name]
            if reg is not None and tensor is not None:
                total = total + reg(tensor.view(self.keras_weight_shape or tensor.shape))
        return total

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project gamma/beta with their constraints; call after ``optimizer.step()``."""
        for name, tensor in (("gamma", self.weight), ("beta", self.bias)):
            con = self.constraints[name]
            if con is not None and tensor is not None:
                shaped = tensor.view(self.keras_weight_shape or tensor.shape)
                tensor.copy_(con(shaped).reshape(-1))

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
        # flat or Keras (1, ..., C) shape, are accepted and renamed here.
        for keras_name, torch_name in KERAS_WEIGHT_NAMES.items():
            key = prefix + keras_name
            if key in state_dict and prefix + torch_name not in state_dict:
                state_dict[prefix + torch_name] = state_dict.pop(key)
            value = state_dict.get(prefix + torch_name)
            if isinstance(value, Tensor) and value.dim() > 1:
                state_dict[prefix + torch_name] = value.reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


# state names in the order of F.BatchNormStats
_STATE = ("running_mean", "running_var", "running_stddev", "renorm_mean", "renorm_stddev")
