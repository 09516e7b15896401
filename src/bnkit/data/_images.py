"""ImageFolder-style directories: ``root/<class_name>/**/*.png|jpg|jpeg|bmp|gif``."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._optional import optional_import
from ._common import resize

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "class_dirs", "read_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
#: Larger images are refused (JPEGs are first decoded at a reduced scale): 2**25 pixels, an
#: 8K photo, is 400 MB as float32 RGB before the resize.
MAX_PIXELS = 2**25


def class_dirs(root: Path) -> list[Path]:
    """The class sub-directories of ``root``, sorted by name (hidden ones skipped)."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix, case-insensitive), sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _too_large(path: Path, image: Any, mode: str, image_size: int | None) -> str | None:
    """Why ``image`` is too large to decode (None when it is not), after asking JPEGs to decode smaller.

    Only the header has been read when this runs (``Image.open`` is lazy).  A JPEG over
    :data:`MAX_PIXELS` is decoded at a reduced scale (``Image.draft``: 1/2 to 1/8, never below
    ``image_size``); other formats over the limit are refused before any pixel is decoded.
    """
    width, height = image.size
    if width * height > MAX_PIXELS and image.format == "JPEG":
        target = image_size or 1
        image.draft(mode, (max(target, math.ceil(width / 8)), max(target, math.ceil(height / 8))))
        width, height = image.size
    if width * height > MAX_PIXELS:
        return (f"{path}: expected an image of at most {MAX_PIXELS:,} pixels (e.g. 8192 x 4096); found "
                f"{width} x {height} = {width * height:,} pixels (resize it first, or leave it out)")
    return None


def _load(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    """One image as float32 ``(C, H, W)`` in ``mode`` ("RGB" or "L"), resized if asked."""
    image_module = optional_import("PIL.Image", "to read image folders")
    bomb = getattr(image_module, "DecompressionBombError", OSError)
    try:
        with warnings.catch_warnings():  # the size is checked here, before decoding, against MAX_PIXELS
            warnings.simplefilter("ignore", getattr(image_module, "DecompressionBombWarning", Warning))
            with image_module.open(path) as image:
                refusal = _too_large(path, image, mode, image_size)
                if refusal is None:
                    pixels = np.asarray(image.convert(mode), dtype=np.float32)
    except bomb as exc:  # Pillow's own limit (in Image.open) is far above MAX_PIXELS
        raise ValueError(f"{path}: expected an image of at most {MAX_PIXELS:,} pixels; found a larger one "
                         f"({exc})") from None
    except (image_module.UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: expected a readable image ({', '.join(IMAGE_SUFFIXES)}); "
                         f"found {type(exc).__name__}: {exc}") from None
    if refusal is not None:
        raise ValueError(refusal)
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if image_size is None:
        return np.ascontiguousarray(chw)
    return resize(torch.from_numpy(np.ascontiguousarray(chw))[None], image_size)[0].numpy()


def read_image_folder(root: Path, *, image_size: int | None,
                      channels: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(images float32 (N, C, S, S), labels int64 (N,), classes)`` from an image folder.

    Classes are the sub-directory names sorted; images are converted to RGB (gray ``L`` when
    ``channels=1``) with Pillow and resized bilinearly to ``image_size``.  With
    ``image_size=None`` all images must already have the same size.
    """
    optional_import("PIL.Image", f"to read the image folder {root}")
    folders = class_dirs(root)
    files = {folder.name: _images_in(folder) for folder in folders}
    if not any(files.values()):
        from ._cifar import is_cifar_dir

        nested = [f.name for f in folders if is_cifar_dir(f)]
        hint = f" (CIFAR-10 files are in {root / nested[0]}: pass that directory)" if nested else ""
        raise ValueError(f"{root}: image folder without images: expected {root}/<class_name>/*"
                         f"{{{','.join(IMAGE_SUFFIXES)}}}; found class folders {[f.name for f in folders]} "
                         f"with no image files{hint}")
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise ValueError(f"{root}: every class folder must hold images ({', '.join(IMAGE_SUFFIXES)}); "
                         f"found none in {empty}")
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, folder in enumerate(folders):
        for path in files[folder.name]:
            images.append(_load(path, mode, image_size))
            labels.append(label)
    sizes = sorted({image.shape[1:] for image in images})
    if len(sizes) > 1:
        raise ValueError(f"{root}: with image_size=None all images must have one size; found sizes "
                         f"{sizes[:4]}{' ...' if len(sizes) > 4 else ''} (pass image_size to resize them)")
    return np.stack(images), np.array(labels, dtype=np.int64), tuple(folder.name for folder in folders)
