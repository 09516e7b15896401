"""The exceptions :mod:`bnkit.keras` raises on purpose.

Every problem with a file (or with a model being written to one) is a
:class:`KerasFormatError`, a ``ValueError``; the two subclasses say more when it matters.
Nothing else escapes from the readers except ``FileNotFoundError`` for a missing path and
``ImportError`` when the optional dependency ``h5py`` is not installed.
"""
from __future__ import annotations

from typing import Any

__all__ = ["KerasFormatError", "UnsupportedLayerError", "WeightMismatchError"]


class KerasFormatError(ValueError):
    """A file is not a readable Keras model or weights file.

    Raised for truncated or corrupt files, unsafe ``.keras`` archives, malformed configs,
    weights of the wrong dtype, shapes larger than the file could hold, and missing weights.
    A model is never returned half-loaded: the error comes before the model does.
    """


class UnsupportedLayerError(KerasFormatError):
    """A layer has no bnkit equivalent.

    Raised for Keras classes bnkit does not implement, ``Lambda`` layers and custom objects
    (their code is never run), and, when writing, for torch modules Keras cannot express.
    The message names the layer and its class.
    """


class WeightMismatchError(KerasFormatError):
    """The weights in a file do not fit the model: names, counts or shapes differ.

    ``report`` is the :class:`~bnkit.keras.LoadReport` listing every difference at once.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report
