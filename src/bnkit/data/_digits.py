"""scikit-learn's handwritten digits: 1797 real 8x8 gray images shipped inside the package."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._optional import optional_import

__all__ = ["read_digits"]


@lru_cache(maxsize=1)
def read_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(images float64 (1797, 1, 8, 8) in [0, 16], labels int64 (1797,), ("0", ..., "9"))``.

    Read once per process with :func:`sklearn.datasets.load_digits` (no download) and kept in
    memory; the arrays are read-only.
    """
    datasets = optional_import("sklearn.datasets", "for the 'digits' dataset")
    bunch = datasets.load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)[:, None].copy()
    labels = np.asarray(bunch.target, dtype=np.int64).copy()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels, tuple(str(k) for k in range(10))
