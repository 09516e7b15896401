"""bnkit's layers: the Keras family (``BatchNormalization``, ``Dropout``, ``Flatten``) and the
PyTorch family (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``), PyTorch modules both."""
from .batch_norm import BatchNormalization
from .dropout import Dropout
from .flatten import Flatten
from .torch_batch_norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm, TorchBatchNorm

__all__ = ["BatchNormalization", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Dropout", "Flatten", "SyncBatchNorm",
           "TorchBatchNorm"]
