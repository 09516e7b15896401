"""Keras interop without TensorFlow: read and write Keras model and weight files.

* :func:`load_model` - ``.keras`` / ``.h5`` full models -> :class:`KerasModel` (torch).
* :func:`load_weights` - Keras weight files -> any torch model, by layer name.
* :func:`save_model` - bnkit/torch models -> ``.keras`` / ``.h5`` that tf_keras 2.x and
  Keras 3 load.
* :func:`build_from_config` - a Keras model config -> a fresh :class:`KerasModel`.
* :func:`from_torch_batchnorm` / :func:`to_torch_batchnorm` - ``nn.BatchNorm*d`` <-> bnkit.

Only h5py (the optional dependency ``bnkit[keras]``), zipfile and json are used; no code
from a file is ever executed and nothing is unpickled.  Errors: :class:`KerasFormatError`
(a ``ValueError``) and its subclasses :class:`UnsupportedLayerError` and
:class:`WeightMismatchError`.
"""
from __future__ import annotations

from ._load import build_from_config, load_model, read_model_config
from ._mapping import RULES as WEIGHT_RULES
from ._model import KerasModel
from ._save import SaveSummary, save_model
from ._table import SUPPORTED_LAYERS
from ._torch_bn import from_torch_batchnorm, to_torch_batchnorm
from ._weights import LoadReport, load_weights
from .errors import KerasFormatError, UnsupportedLayerError, WeightMismatchError

__all__ = [
    "SUPPORTED_LAYERS", "WEIGHT_RULES", "KerasFormatError", "KerasModel", "LoadReport", "SaveSummary",
    "UnsupportedLayerError", "WeightMismatchError", "build_from_config", "from_torch_batchnorm", "load_model",
    "load_weights", "read_model_config", "save_model", "to_torch_batchnorm",
]
