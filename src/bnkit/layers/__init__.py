"""bnkit's layers: Keras semantics, PyTorch modules."""
from .batch_norm import BatchNormalization
from .dropout import Dropout
from .flatten import Flatten

__all__ = ["BatchNormalization", "Dropout", "Flatten"]
