"""Model surgery around batch norm; every function returns a new model and a report.

* :func:`insert_batch_norm` adds :class:`~bnkit.BatchNormalization` after conv/linear
  layers (before or after their activation), optionally calibrated so that inference
  outputs are unchanged.
* :func:`fold_batch_norm` merges inference batch norms into neighbouring conv/linear
  layers; :func:`fold_into_previous` and :func:`fold_into_next` are the tensor-level math.

Both work on ``nn.Sequential`` trees (names and type kept) and on any model torch.fx can
trace, and never modify the caller's model.
"""
from .fold import FoldReport, Folded, NotFolded, fold_batch_norm, fold_into_next, fold_into_previous
from .insert import (
    DEFAULT_ACTIVATION_TYPES,
    DEFAULT_LAYER_TYPES,
    PLACEMENTS,
    InsertReport,
    Insertion,
    insert_batch_norm,
)

__all__ = [
    "DEFAULT_ACTIVATION_TYPES",
    "DEFAULT_LAYER_TYPES",
    "PLACEMENTS",
    "FoldReport",
    "Folded",
    "InsertReport",
    "Insertion",
    "NotFolded",
    "fold_batch_norm",
    "fold_into_next",
    "fold_into_previous",
    "insert_batch_norm",
]
