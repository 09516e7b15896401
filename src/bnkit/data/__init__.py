"""Datasets for bnkit's experiment runner (``bnkit train`` / ``bnkit demo``).

:func:`load_dataset` turns a source string into a :class:`Dataset` of NCHW float32 images,
normalised per channel with training statistics, and int64 labels:

* ``"digits"``: scikit-learn's 1797 handwritten 8x8 digits (shipped with scikit-learn, no
  download), resized to ``image_size``, with a fixed stratified split;
* a CIFAR-10 "python version" directory (official train/test split);
* an ImageFolder-style directory ``root/<class_name>/*.png|jpg|jpeg|bmp|gif``;
* an ``.npz`` file with ``x``/``y`` or ``x_train``/``y_train``/``x_val``/``y_val``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._repr import short
from ._common import Dataset, check_options, finalize, stratified_split, stratified_subset
from ._images import IMAGE_SUFFIXES, class_dirs

__all__ = ["Dataset", "load_dataset", "stratified_split", "stratified_subset"]

_EXPECTED = ("'digits', a CIFAR-10 python-version directory (data_batch_1..5, test_batch, batches.meta), "
             "an image folder (root/<class_name>/*.png|jpg|jpeg|bmp|gif) or an .npz file")


def load_dataset(source: str, *, image_size: int | None = 32, val_fraction: float = 0.2, seed: int = 0,
                 limit: int | None = None, channels: int | None = None) -> Dataset:
    """Load a classification dataset as a :class:`Dataset`.

    Args:
        source: ``"digits"`` (checked before any path of that name), or a path to a CIFAR-10
            python-version directory, an ImageFolder-style directory, or an ``.npz`` file.
        image_size: Side of the square images, resized bilinearly
            (``torch.nn.functional.interpolate``, ``align_corners=False``); ``None`` keeps the
            stored size (every image must then have the same size).  VGG needs at least 32.
        val_fraction: Fraction of the examples held out for validation by a stratified split
            drawn with ``numpy.random.default_rng(seed)`` (deterministic across machines).
            Ignored where the source has its own split: CIFAR-10 validates on ``test_batch``
            (the official split) and an ``.npz`` with ``x_val``/``y_val`` on those.
        seed: Seed of the split and of the ``limit`` subset.
        limit: Use at most this many training examples (a stratified, deterministic subset;
            validation is untouched).  ``None`` uses all.
        channels: ``None`` keeps the source's channels (digits 1, CIFAR-10 and image folders
            3 (RGB), ``.npz`` as stored); ``1`` converts RGB to gray (ITU-R 601 luma);
            ``3`` repeats a gray channel.

    ``.npz`` layout: ``x`` of shape ``(N, H, W)``; ``(N, C, H, W)`` if axis 1 has size 1 or 3
    (checked first); else ``(N, H, W, C)`` if the last axis has size 1 or 3.  ``y``: integer
    labels ``>= 0``.  An optional 1-D string array ``classes`` names the labels.  The archive
    is read with ``allow_pickle=False``.

    Raises:
        ValueError: an invalid option, an unknown source name, a directory that is neither
            CIFAR-10 nor an image folder, an image folder without images, or malformed data.
        FileNotFoundError: a missing path, or a CIFAR-10 directory lacking some files.
        ImportError: scikit-learn (digits) or Pillow (image folders) is not installed.
    """
    check_options(image_size, val_fraction, seed, limit, channels)
    options = {"image_size": image_size, "seed": seed, "limit": limit, "channels": channels}
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise ValueError(f"Invalid dataset `source`: expected {_EXPECTED}; received: source={short(source)}.")
    if source == "digits":
        from ._digits import read_digits

        x, y, classes = read_digits()
        train, val = stratified_split(y, val_fraction, seed)
        return finalize("digits", x[train], y[train], x[val], y[val], classes, **options)
    path = Path(source).expanduser()
    if not path.exists():
        text = str(source)
        if os.sep not in text and "/" not in text and not path.suffix:
            raise ValueError(f"Unknown dataset {text!r}: expected {_EXPECTED}; found no built-in dataset "
                             f"and no file or directory of that name.")
        raise FileNotFoundError(f"Dataset path {text!r} does not exist: expected {_EXPECTED}.")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"Unsupported dataset file {str(path)!r}: expected an .npz archive (or a directory); "
                             f"found a {path.suffix or 'suffix-less'} file.")
        return _from_npz(path, val_fraction, options)
    from ._cifar import is_cifar_dir, read_cifar10

    if is_cifar_dir(path):
        x_train, y_train, x_val, y_val, classes = read_cifar10(path)
        return finalize("cifar10", x_train, y_train, x_val, y_val, classes, **options)
    if class_dirs(path):
        from ._images import read_image_folder

        x, y, classes = read_image_folder(path, image_size=image_size, channels=channels)
        train, val = stratified_split(y, val_fraction, seed)
        return finalize(path.resolve().name, x[train], y[train], x[val], y[val], classes, **options)
    found = sorted(p.name for p in path.iterdir())
    hint = " (images directly in the root: move them into one folder per class)" if any(
        name.lower().endswith(IMAGE_SUFFIXES) for name in found) else ""
    raise ValueError(f"{path}: neither a CIFAR-10 python directory nor an image folder: expected data_batch_1..5, "
                     f"test_batch and batches.meta, or one sub-directory per class; found "
                     f"{found[:10]}{' ...' if len(found) > 10 else ''}{hint}")


def _from_npz(path: Path, val_fraction: float, options: dict[str, Any]) -> Dataset:
    """A :class:`Dataset` from an ``.npz`` (see :func:`load_dataset` for the accepted layouts)."""
    from ._npz import read_npz

    x, y, x_val, y_val, classes = read_npz(path)
    if x_val is None or y_val is None:
        train, val = stratified_split(y, val_fraction, options["seed"])
        x, y, x_val, y_val = x[train], y[train], x[val], y[val]
    return finalize(path.stem, x, y, x_val, y_val, classes, **options)
