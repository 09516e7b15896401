"""``BatchNorm1d/2d/3d``: PyTorch's signature and meanings, with every bnkit feature.

Subclasses of ``torch.nn.modules.batchnorm._BatchNorm``: every tool and recipe that knows
``nn.BatchNorm*`` (``isinstance`` checks, ``fuse_conv_bn_eval``, ``norm_layer=``,
``replace_all_batch_norm_modules_``, state_dicts, ``.half()``) knows them.  With default
arguments they *are* ``nn.BatchNorm*`` (same code path, same numbers).  The keyword-only
arguments add batch renormalization, ghost batches, cross-process statistics and Keras
regularizers/constraints, computed by :mod:`bnkit.functional` in PyTorch's conventions:
``momentum`` (and ``renorm_momentum``) is the weight of the *new* value, ``None`` is a
cumulative average, the running variance is fed the unbiased batch variance.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .._repr import short
from .. import constraints, regularizers
from .. import functional as F
from .._check import check_bool, check_epsilon, check_fraction, check_input_dtype, check_positive
from .._spec import BNSpec
from ..distributed import is_distributed
from .batch_norm import KERAS_WEIGHT_NAMES
from ._common import BNExtras, fx_leaf, flat_state, is_tracing, renorm_state, store_stats

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "TorchBatchNorm"]



class TorchBatchNorm(BNExtras, _BatchNorm):
    r"""Base of :class:`BatchNorm1d`/:class:`BatchNorm2d`/:class:`BatchNorm3d`.

    Arguments before ``*`` are ``torch.nn.BatchNorm2d``'s, with its meanings.  bnkit's:

    * ``renorm``, ``renorm_clipping`` (``{"rmax", "rmin", "dmax"}``; change it later with
      :meth:`set_renorm_clipping`), ``renorm_momentum`` (weight of the new value, like
      ``momentum``; 0.01 is Keras' 0.99): batch renormalization (Ioffe, 2017).  Needs
      ``track_running_stats=True``; adds the buffers ``running_stddev``, ``renorm_mean``,
      ``renorm_stddev``, and ``running_var`` follows ``running_stddev**2 - eps`` as in Keras
      (the moving stddevs are fed ``sqrt(unbiased batch variance + eps)``, PyTorch's rule).
    * ``virtual_batch_size``: ghost batch normalization in training (statistics per group of
      that many samples, Keras' strided grouping; one averaged update per step, each ghost
      variance Bessel-corrected over its own elements).
    * ``synchronized``/``process_group``: statistics over every process of a
      ``torch.distributed`` group (any backend, CPU included); ghost batches cannot be.
    * ``gamma_regularizer``/``beta_regularizer``/``gamma_constraint``/``beta_constraint``:
      Keras names, classes or callables, applied by :func:`bnkit.regularization_loss` and
      :func:`bnkit.apply_constraints`.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        renorm: bool = False,
        renorm_clipping: Mapping[str, float] | None = None,
        renorm_momentum: float = 0.01,
        virtual_batch_size: int | None = None,
        synchronized: bool = False,
        process_group: Any = None,
        gamma_regularizer: Any = None,
        beta_regularizer: Any = None,
        gamma_constraint: Any = None,
        beta_constraint: Any = None,
    ) -> None:
        check_positive("num_features", num_features, int)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < math.inf:
            raise ValueError(f"`eps` must be a non-negative finite number; received: eps={short(eps)}")
        check_epsilon("eps", eps, dtype or torch.get_default_dtype(), zero_ok=True)
        if momentum is not None:
            check_fraction("momentum", momentum)
        for name, value in (("affine", affine), ("track_running_stats", track_running_stats), ("bias", bias)):
            check_bool(name, value)
        if renorm and not track_running_stats:
            raise ValueError("`renorm=True` needs the moving statistics; expected track_running_stats=True; "
                             "received: track_running_stats=False")
        self._spec = BNSpec.create(
            axis=1, momentum=0.99, epsilon=1.0, center=affine and bias, scale=affine, renorm=renorm,
            renorm_clipping=renorm_clipping, renorm_momentum=1.0 - check_fraction("renorm_momentum", renorm_momentum),
            fused=False, virtual_batch_size=virtual_batch_size, synchronized=synchronized, variance_rule="unbiased",
        )
        self.renorm_momentum = renorm_momentum
        self.process_group = process_group
        self.regularizers = {"gamma": regularizers.get(gamma_regularizer), "beta": regularizers.get(beta_regularizer)}
        self.constraints = {"gamma": constraints.get(gamma_constraint), "beta": constraints.get(beta_constraint)}
        self._plain = not (renorm or virtual_batch_size or synchronized)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        factory = {"device": device, "dtype": dtype}
        for name in ("running_stddev", "renorm_mean", "renorm_stddev"):
            self.register_buffer(name, torch.empty(num_features, **factory) if renorm else None)
        self.register_buffer("_clipping", self._spec.renorm_clipping.tensor(device=device) if renorm else None,
                             persistent=False)
        self.reset_running_stats()

    # ---- state -------------------------------------------------------------------------
    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if getattr(self, "renorm_stddev", None) is not None:
            with torch.no_grad():
                self.running_stddev.fill_(1.0)
                self.renorm_mean.zero_()
                self.renorm_stddev.fill_(1.0)

    @property
    def spec(self) -> BNSpec:
        """This layer as a :class:`~bnkit.BNSpec` (Keras convention: momentum = 1 - ``momentum``).

        ``momentum=None`` (cumulative average) is described by the weight of its next update.
        """
        new = self.momentum
        if new is None:
            tracked = 0 if self.num_batches_tracked is None else int(self.num_batches_tracked)
            new = 1.0 / (tracked + 1)
        return dataclasses.replace(self._spec, momentum=1.0 - new, epsilon=self.eps,
                                   center=self.bias is not None, scale=self.weight is not None)

    @property
    def renorm(self) -> bool:
        return self._spec.renorm

    @property
    def virtual_batch_size(self) -> int | None:
        return self._spec.virtual_batch_size

    @property
    def synchronized(self) -> bool:
        return self._spec.synchronized

    # ---- forward -----------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        if self._plain:
            try:
                return super().forward(input)  # exactly nn.BatchNorm*
            except RuntimeError as error:  # torch's "mixed dtype (CPU)": say which dtypes and what to call
                if "mixed dtype" in str(error) and not is_tracing(input):
                    check_input_dtype(input, self.weight, self.bias, self.running_mean, self.running_var)
                raise
        if not is_tracing(input):
            self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return self._extended(input, batch_stats, factor, track)

    def _extended(self, x: Tensor, training: bool, factor: float, track: bool) -> Tensor:
        """Training or inference with bnkit's options, in PyTorch's conventions.

        Ghost batches and renorm apply in ``train()`` only; an untracked layer in ``eval()``
        normalises with the statistics of the whole batch, as ``nn.BatchNorm*`` does.
        """
        spec = self._spec
        local = not (spec.synchronized and is_distributed(self.process_group))  # else the global batch counts
        if training and local and x.numel() and x.numel() // x.shape[1] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        out, stats = F._batch_norm(  # torch's rules for eps and momentum were checked above
            x, self.running_mean if track else None, self.running_var if track else None, self.weight, self.bias,
            training=training, axis=1, momentum=1.0 - factor, epsilon=self.eps, variance_rule="unbiased",
            renorm=renorm_state(self, spec.renorm_momentum) if spec.renorm and training and track else None,
            virtual_batch_size=spec.virtual_batch_size if self.training else None,
            adjustment=None, mask=None, synchronized=spec.synchronized, process_group=self.process_group,
        )
        if training and track:
            store_stats(self, stats)
        return out

    def extra_repr(self) -> str:
        extras = {"renorm": self.renorm, "renorm_clipping": self.renorm_clipping or None,
                  "renorm_momentum": self.renorm_momentum if self.renorm else None,
                  "virtual_batch_size": self.virtual_batch_size, "synchronized": self.synchronized}
        return super().extra_repr() + "".join(f", {k}={v!r}" for k, v in extras.items() if v)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Keras-named entries (gamma, moving_mean, ...; flat or Keras-shaped) load too.
        flat_state(state_dict, prefix, KERAS_WEIGHT_NAMES)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class BatchNorm1d(TorchBatchNorm):
    """``torch.nn.BatchNorm1d`` (2-D or 3-D input) with bnkit's options; see :class:`TorchBatchNorm`."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(TorchBatchNorm):
    """``torch.nn.BatchNorm2d`` (4-D input) with bnkit's options; see :class:`TorchBatchNorm`."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(TorchBatchNorm):
    """``torch.nn.BatchNorm3d`` (5-D input) with bnkit's options; see :class:`TorchBatchNorm`."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")


class SyncBatchNorm(TorchBatchNorm):
    """``torch.nn.SyncBatchNorm`` (any input of rank >= 2, statistics over every process).

    Unlike PyTorch's, it runs on any ``torch.distributed`` backend (gloo on CPU too) and
    takes bnkit's options; ``synchronized=True`` is its default.  Outside a process group
    of more than one process it is plain batch normalization.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: torch.dtype | None = None, *, synchronized: bool = True, **options: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         synchronized=synchronized, process_group=process_group, **options)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
