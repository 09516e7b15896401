"""Whole-model converters between PyTorch's BN layers and bnkit's torch-flavoured ones.

Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, they replace layers *in place*
and return the new root (a new object only when the root itself is a BN layer).  The
replacement takes over the old layer's parameters and buffers (the same tensor objects),
so an optimizer built on ``model.parameters()`` keeps working and nothing is copied: the
only new memory is the state a new option needs (renorm's three statistics).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormalization, SyncBatchNorm, TorchBatchNorm

__all__ = ["convert_batchnorm", "convert_sync_batchnorm", "to_torch_batchnorm"]

_TO_BNKIT: dict[type, type[TorchBatchNorm]] = {
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
    nn.SyncBatchNorm: SyncBatchNorm,
}
_TO_TORCH: dict[type, type[_BatchNorm]] = {
    BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, BatchNorm3d: nn.BatchNorm3d,
    SyncBatchNorm: nn.SyncBatchNorm,
}
_OPTIONS = ("renorm", "renorm_clipping", "renorm_momentum", "virtual_batch_size", "synchronized", "process_group",
            "gamma_regularizer", "beta_regularizer", "gamma_constraint", "beta_constraint")


def convert_batchnorm(model: nn.Module, **options: Any) -> nn.Module:
    """Swap every ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` for bnkit's class.

    ``eps``, ``momentum``, ``affine``, ``track_running_stats``, the training mode, the
    parameters and statistics are kept; ``options`` are bnkit's keyword arguments
    (``renorm=True``, ``virtual_batch_size=8``...) given to every new layer.  Eval outputs
    are unchanged.  With ``renorm=True`` the renorm statistics start from the running ones
    (``renorm_mean = running_mean``, stddevs ``sqrt(running_var + eps)``).  bnkit layers
    already in the model are left alone.  Returns the new root.
    """
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"convert_batchnorm() got unknown options {sorted(unknown)}; expected some of {list(_OPTIONS)}")
    if options.get("renorm"):
        untracked = [name for name, m in model.named_modules() if type(m) in _TO_BNKIT and not m.track_running_stats]
        if untracked:
            raise ValueError(f"`renorm=True` needs moving statistics; these layers have track_running_stats=False: {untracked}")
    return _replace(model, lambda m: type(m) in _TO_BNKIT, lambda m: _to_bnkit(m, options))


def convert_sync_batchnorm(model: nn.Module, process_group: Any = None) -> nn.Module:
    """Make every BN layer of ``model`` compute its statistics over all processes.

    Unlike ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which turns every ``_BatchNorm``
    (bnkit's too) into a plain ``SyncBatchNorm`` and so drops renorm, this keeps each layer's
    options: ``nn.BatchNorm*``/``SyncBatchNorm`` and bnkit's torch-flavoured layers become
    bnkit layers with ``synchronized=True``, ``bnkit.BatchNormalization`` layers get
    ``synchronized=True`` (with tf.keras' consequence: the non-fused, biased moving-variance
    rule).  Ghost-batch layers stay per-process: a ghost batch is a part of one process'
    batch by definition.  Returns the new root.
    """
    def wanted(m: nn.Module) -> bool:
        if isinstance(m, TorchBatchNorm):
            return not m.synchronized and m.virtual_batch_size is None
        if isinstance(m, BatchNormalization):
            return not m.synchronized and m.virtual_batch_size is None
        return type(m) in _TO_BNKIT

    def make(m: nn.Module) -> nn.Module:
        if isinstance(m, BatchNormalization):
            return _synchronized_keras(m, process_group)
        extras = _options_of(m) if isinstance(m, TorchBatchNorm) else {}
        return _to_bnkit(m, {**extras, "synchronized": True, "process_group": process_group})

    return _replace(model, wanted, make)


def to_torch_batchnorm(model: nn.Module) -> nn.Module:
    """Swap bnkit's BN layers back for ``nn.BatchNorm1d/2d/3d`` (``SyncBatchNorm``) where exact.

    Torch-flavoured layers without bnkit options move their tensors over; a
    ``bnkit.BatchNormalization`` with ``axis=1`` is converted by
    :func:`bnkit.keras.to_torch_batchnorm` (a copy).  A layer that torch cannot express
    (renorm, ghost batches, synchronized on a non-sync class, regularizers, other axes)
    raises ``ValueError`` naming every such layer; nothing is replaced then.
    """
    from .keras import to_torch_batchnorm as keras_to_torch

    refused = []
    for name, m in model.named_modules():
        if isinstance(m, TorchBatchNorm):
            extras = {k: v for k, v in _options_of(m).items() if k != "process_group"}
            if type(m) is SyncBatchNorm:
                extras.pop("synchronized", None)
            if extras:
                refused.append(f"{name or '<root>'} ({type(m).__name__}: {extras})")
        elif isinstance(m, BatchNormalization):
            try:
                keras_to_torch(m)
            except ValueError as error:
                refused.append(f"{name or '<root>'} (BatchNormalization: {error})")
    if refused:
        raise ValueError("These layers have no exact torch.nn equivalent; expected plain batch norms; received: "
                         + "; ".join(refused))

    def make(m: nn.Module) -> nn.Module:
        if isinstance(m, BatchNormalization):
            return keras_to_torch(m)
        return _move_state(m, _TO_TORCH[type(m)], {"process_group": m.process_group} if type(m) is SyncBatchNorm else {})

    return _replace(model, lambda m: isinstance(m, (TorchBatchNorm, BatchNormalization)), make)


# ---- helpers ----------------------------------------------------------------------------
def _replace(module: nn.Module, wanted: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace, depth first, every submodule for which ``wanted`` holds; returns the new root."""
    if wanted(module):
        return make(module)
    for name, child in module.named_children():
        new = _replace(child, wanted, make)
        if new is not child:
            setattr(module, name, new)
    return module


def _options_of(m: TorchBatchNorm) -> dict[str, Any]:
    """The bnkit options of a torch-flavoured layer that differ from the defaults."""
    spec = m.spec
    options: dict[str, Any] = {}
    if spec.renorm:
        options.update(renorm=True, renorm_clipping=spec.renorm_clipping.as_dict(), renorm_momentum=m.renorm_momentum)
    if spec.virtual_batch_size is not None:
        options["virtual_batch_size"] = spec.virtual_batch_size
    if spec.synchronized:
        options.update(synchronized=True, process_group=m.process_group)
    for kind in ("regularizer", "constraint"):
        table = m.regularizers if kind == "regularizer" else m.constraints
        options.update({f"{k}_{kind}": v for k, v in table.items() if v is not None})
    return options


def _to_bnkit(m: _BatchNorm, options: dict[str, Any]) -> TorchBatchNorm:
    cls = _TO_BNKIT.get(type(m)) or type(m)
    if cls is SyncBatchNorm or type(m) is SyncBatchNorm:
        options = {"synchronized": True, **options}
        if options.get("virtual_batch_size") is not None:
            options["synchronized"] = False
    new = _move_state(m, cls, options)
    if new.renorm and not (isinstance(m, TorchBatchNorm) and m.renorm):
        with torch.no_grad():
            new.running_stddev.copy_((new.running_var + new.eps).sqrt())
            new.renorm_mean.copy_(new.running_mean)
            new.renorm_stddev.copy_(new.running_stddev)
    return new


def _move_state(m: _BatchNorm, cls: type, options: dict[str, Any]) -> nn.Module:
    """A ``cls`` layer that takes over ``m``'s tensors (same objects), mode and qconfig."""
    reference = m.weight if m.weight is not None else m.running_mean
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, **factory,
              bias=m.bias is not None, **options)
    for name in ("weight", "bias"):
        if getattr(m, name) is not None:
            setattr(new, name, getattr(m, name))
    for name in ("running_mean", "running_var", "num_batches_tracked", "running_stddev", "renorm_mean",
                 "renorm_stddev"):
        value = getattr(m, name, None)
        if value is not None and name in new._buffers and new._buffers[name] is not None:
            new._buffers[name] = value
    new.train(m.training)
    if hasattr(m, "qconfig"):
        new.qconfig = m.qconfig
    return new


def _synchronized_keras(layer: BatchNormalization, process_group: Any) -> BatchNormalization:
    new = copy.copy(layer)  # its own __dict__; the dicts below are copied so the tensors are shared, not the slots
    for attr in ("_parameters", "_buffers", "_modules"):
        new.__dict__[attr] = dict(layer.__dict__[attr])
    new._spec = layer.spec.replace(synchronized=True, fused=None)
    new.process_group = process_group
    if layer.built is not None:
        shape = [2] * layer.built.ndim
        sizes = layer.built.keras_weight_shape
        if len(layer.built.axes) == 1:
            shape[layer.built.axes[0]] = layer.built.features
        else:
            shape = [s if d in layer.built.axes else 2 for d, s in enumerate(sizes)]
        new.built = new._spec.build(shape)
    return new
