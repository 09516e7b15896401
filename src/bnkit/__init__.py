"""bnkit: batch normalization with complete tf.keras semantics for PyTorch.

The public surface, in one place:

* layers, Keras family: :class:`BatchNormalization`, :class:`Dropout`, :class:`Flatten`
* layers, PyTorch family (drop-in for ``torch.nn``): :class:`BatchNorm1d`, :class:`BatchNorm2d`,
  :class:`BatchNorm3d`, :class:`SyncBatchNorm`; whole models: :func:`convert_batchnorm`,
  :func:`to_torch_batchnorm`, :func:`convert_sync_batchnorm`
* one description of a BN layer: :class:`BNSpec` (``layer.spec``), :class:`BuiltBN`
* pure functions: :mod:`bnkit.functional` (``batch_norm``, ``dropout``, ``flatten``, ``moments``)
* Keras registries: :mod:`bnkit.initializers`, :mod:`bnkit.regularizers`, :mod:`bnkit.constraints`
* training helpers: :func:`regularization_loss`, :func:`apply_constraints`
* summaries in Keras' and PyTorch's conventions: :func:`summary`
* models: :mod:`bnkit.models` (VGG16/VGG19 with Keras layer names and optional BN)
* surgery: :func:`insert_batch_norm` (optionally output-preserving), :func:`fold_batch_norm`
* Keras files without TensorFlow: :mod:`bnkit.keras` (load/save models and weights)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import constraints, functional, initializers, keras, models, regularizers, surgery
from ._spec import BNSpec, BuiltBN
from .convert import convert_batchnorm, convert_sync_batchnorm, to_torch_batchnorm
from .layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormalization, Dropout, Flatten, SyncBatchNorm
from .summary import Row, Summary, summary
from .surgery import FoldReport, InsertReport, fold_batch_norm, insert_batch_norm

__version__ = "0.1.0"

__all__ = [
    "BNSpec",
    "BuiltBN",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormalization",
    "SyncBatchNorm",
    "convert_batchnorm",
    "convert_sync_batchnorm",
    "to_torch_batchnorm",
    "Dropout",
    "Flatten",
    "apply_constraints",
    "constraints",
    "functional",
    "initializers",
    "regularization_loss",
    "regularizers",
    "Row",
    "Summary",
    "summary",
    "keras",
    "models",
    "surgery",
    "FoldReport",
    "InsertReport",
    "fold_batch_norm",
    "insert_batch_norm",
]


def regularization_loss(model: nn.Module) -> Tensor:
    """Sum of every layer's weight penalties (Keras' ``model.losses``).

    Add it to the training loss: ``loss = criterion(out, y) + bnkit.regularization_loss(model)``.
    Layers take part by defining ``regularization_loss()``; shared layers count once.
    """
    penalties = [
        module.regularization_loss()
        for module in model.modules()
        if callable(getattr(module, "regularization_loss", None))
    ]
    if penalties:
        return torch.stack([p.reshape(()) for p in penalties]).sum()
    param = next(model.parameters(), None)
    return torch.zeros((), device=None if param is None else param.device)


def apply_constraints(model: nn.Module) -> None:
    """Apply every layer's weight constraints; call right after ``optimizer.step()``."""
    for module in model.modules():
        project = getattr(module, "apply_constraints", None)
        if callable(project):
            project()
