"""``.npz`` archives of images and integer labels (read with ``allow_pickle=False``).

Accepted contents:

* ``x`` and ``y`` (split into train/validation by the caller), or
* ``x_train``, ``y_train``, ``x_val`` and ``y_val`` (used as given; takes precedence), and
* optionally ``classes``: a 1-D string array naming the labels (``classes[k]`` names label ``k``).

Image layout, decided from the shape of each ``x`` array:

* rank 3, ``(N, H, W)``: one channel;
* rank 4 with axis 1 of size 1 or 3: channels-first ``(N, C, H, W)`` (checked first);
* rank 4 with the last axis of size 1 or 3: channels-last ``(N, H, W, C)``;
* anything else is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ._members import open_npz, read_member

__all__ = ["MAX_CLASSES", "NpzData", "read_npz"]

_SPLIT_KEYS = ("x_train", "y_train", "x_val", "y_val")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Labels at or above this are refused outright (an ImageNet-21k has 21,841 classes).
MAX_CLASSES = 100_000
#: Fewer classes than this are accepted whatever the number of examples (small test sets).
_FEW_CLASSES = 1_000
NpzData = tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray], tuple[str, ...]]


def _images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """``x`` as an ``(N, C, H, W)`` array of real numbers, validated."""
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: expected '{key}' to hold real numbers (integer or float); found dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        pass
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 4:
        raise ValueError(f"{path}: cannot tell the channel axis of '{key}': expected (N, C, H, W) or (N, H, W, C) "
                         f"with C = 1 or 3; found shape {x.shape}")
    else:
        raise ValueError(f"{path}: expected '{key}' of rank 3 (N, H, W) or 4 (N, C, H, W) / (N, H, W, C); "
                         f"found rank {x.ndim}, shape {x.shape}")
    if min(x.shape) == 0:
        raise ValueError(f"{path}: expected '{key}' with at least one image of at least 1x1 pixels; "
                         f"found shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        low, high = x.min(), x.max()  # NaN propagates; no temporary array as large as x
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{path}: expected finite pixel values in '{key}'; found NaN or infinity")
        if max(-float(low), float(high)) > _FLOAT32_MAX:
            raise ValueError(f"{path}: expected pixel values in '{key}' that fit float32 (|value| <= "
                             f"{_FLOAT32_MAX:.4g}), the dtype images are trained in; found values from {float(low):.4g} "
                             f"to {float(high):.4g}, which become infinite in float32")
    return x


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """``y`` as int64 labels, one per image, non-negative."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: expected '{key}' to be a 1-D array of integer labels; "
                         f"found dtype {y.dtype}, shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}: expected '{key}' to have one label per image ({n}); found {len(y)}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{path}: expected non-negative labels in '{key}'; found minimum {y.min()}")
    top = int(y.max()) if len(y) else 0
    if top >= MAX_CLASSES:
        raise ValueError(f"{path}: expected labels in '{key}' below {MAX_CLASSES:,} (each label up to the largest "
                         f"becomes a class and an output of the model); found label {top:,}")
    return y.astype(np.int64)


def _classes(path: Path, names: np.ndarray | None, num_labels: int) -> tuple[str, ...]:
    """The class names: ``classes`` if stored (validated), else ``"0"``, ``"1"``, ...."""
    if names is None:
        return tuple(str(k) for k in range(num_labels))
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError(f"{path}: expected 'classes' to be a 1-D array of strings; "
                         f"found dtype {names.dtype}, shape {names.shape}")
    texts = tuple(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(texts) < num_labels or len(set(texts)) != len(texts):
        raise ValueError(f"{path}: expected 'classes' to hold distinct names for labels 0..{num_labels - 1}; "
                         f"found {len(texts)} names ({len(set(texts))} distinct)")
    return texts


def read_npz(path: Path) -> NpzData:
    """``(x, y, x_val, y_val, classes)`` from ``path``; ``x_val``/``y_val`` are ``None`` for the ``x``/``y`` layout.

    Images are returned as ``(N, C, H, W)`` arrays of their stored dtype; labels as int64.
    """
    archive = open_npz(path, str(path), "a numpy .npz archive", "a numpy .npz archive of named arrays")
    with archive:
        keys = set(archive.files)
        if set(_SPLIT_KEYS) <= keys:
            wanted = [*_SPLIT_KEYS]
        elif {"x", "y"} <= keys:
            wanted = ["x", "y"]
        else:
            raise ValueError(f"{path}: expected arrays 'x' and 'y', or 'x_train', 'y_train', 'x_val' and 'y_val'; "
                             f"found {sorted(keys)}")
        if "classes" in keys:
            wanted.append("classes")
        arrays: dict[str, np.ndarray] = {}
        for key in wanted:
            arrays[key] = read_member(path, archive, key, str(path), f"'{key}' to be a plain (non-object) numpy array")
    split = "x_train" in arrays
    xk, yk = ("x_train", "y_train") if split else ("x", "y")
    x_train = _images(path, xk, arrays[xk])
    y_train = _labels(path, yk, arrays[yk], len(x_train))
    x_val = y_val = None
    if split:
        x_val = _images(path, "x_val", arrays["x_val"])
        y_val = _labels(path, "y_val", arrays["y_val"], len(x_val))
        if x_val.shape[1] != x_train.shape[1]:
            raise ValueError(f"{path}: expected 'x_train' and 'x_val' with the same number of channels; "
                             f"found {x_train.shape[1]} and {x_val.shape[1]}")
    num_labels = 1 + max(int(y.max()) for y in (y_train, y_val) if y is not None)
    examples = sum(len(y) for y in (y_train, y_val) if y is not None)
    if num_labels > max(examples, _FEW_CLASSES):
        raise ValueError(f"{path}: expected labels 0..K-1 with K at most the number of examples ({examples}) "
                         f"or {_FEW_CLASSES}; found label {num_labels - 1}, which would make {num_labels:,} classes, "
                         "most of them without any example")
    classes = _classes(path, arrays.get("classes"), num_labels)
    return x_train, y_train, x_val, y_val, classes
