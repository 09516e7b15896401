"""The :class:`Dataset` record and the steps every loader shares.

Loaders produce raw ``numpy`` arrays in ``(N, C, H, W)`` layout; :func:`finalize` turns them
into a :class:`Dataset`: optional stratified ``limit`` on the training set, channel
conversion, bilinear resizing, and per-channel normalisation with training statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from .._repr import short

__all__ = ["Dataset", "check_options", "finalize", "resize", "stratified_split", "stratified_subset"]

_RESIZE_CHUNK = 2048
# ITU-R 601-2 luma, the weights Pillow's ``convert("L")`` uses.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A classification dataset ready for a VGG: NCHW float32 images and int64 labels.

    Both image tensors are normalised per channel with the mean and standard deviation of
    ``x_train`` (population statistics), so the training images have mean ~0 and std ~1 per
    channel.  ``classes[k]`` is the name of label ``k``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        """Check dtypes, ranks and lengths, so a malformed record fails where it is made."""
        for split, x, y in (("train", self.x_train, self.y_train), ("val", self.x_val, self.y_val)):
            if x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(f"Invalid Dataset `x_{split}`: expected a float32 (N, C, H, W) tensor; "
                                 f"received: dtype={x.dtype}, shape={tuple(x.shape)}.")
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise ValueError(f"Invalid Dataset `y_{split}`: expected an int64 vector of {len(x)} labels; "
                                 f"received: dtype={y.dtype}, shape={tuple(y.shape)}.")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"Invalid Dataset `y_{split}`: expected labels in [0, {len(self.classes)}); "
                                 f"received: min={int(y.min())}, max={int(y.max())}.")
        if self.x_val.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(f"Invalid Dataset: expected x_train and x_val with the same (C, H, W); received: "
                             f"{tuple(self.x_train.shape[1:])} and {tuple(self.x_val.shape[1:])}.")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image, as the VGG builders take it."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """The number of classes (``len(classes)``)."""
        return len(self.classes)

    def __repr__(self) -> str:
        """A one-line summary (the tensors themselves are too large to print)."""
        return (f"Dataset(name={self.name!r}, train={len(self.x_train)}, val={len(self.x_val)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def _is_int(value: object) -> bool:
    """Whether ``value`` is a Python or numpy integer (booleans excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_options(image_size: int | None, val_fraction: float, seed: int, limit: int | None,
                  channels: int | None) -> None:
    """Raise ``ValueError`` for an out-of-range :func:`~bnkit.data.load_dataset` option."""
    if image_size is not None and not (_is_int(image_size) and image_size >= 1):
        raise ValueError(f"Invalid `image_size`: expected a positive int or None; received: image_size={short(image_size)}.")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"Invalid `val_fraction`: expected a number in (0, 1); "
                         f"received: val_fraction={short(val_fraction)}.")
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"Invalid `seed`: expected a non-negative int; received: seed={short(seed)}.")
    if limit is not None and not (_is_int(limit) and limit >= 1):
        raise ValueError(f"Invalid `limit`: expected a positive int or None; received: limit={short(limit)}.")
    if channels is not None and (not _is_int(channels) or channels not in (1, 3)):
        raise ValueError(f"Invalid `channels`: expected 1, 3 or None; received: channels={short(channels)}.")


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder, ties by class)."""
    quota = counts.astype(np.float64) * total / counts.sum()
    share = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - share), kind="stable")
    share[order[: total - int(share.sum())]] += 1
    return share


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/validation indices (each sorted ascending).

    ``round(val_fraction * N)`` examples go to validation, shared between classes in
    proportion to their sizes; every class with at least two examples keeps at least one on
    each side.  Within each class (in ascending label order) the examples are drawn with
    ``numpy.random.default_rng(seed)``, so the split is the same on every machine.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_val = _allocate(counts, int(np.floor(val_fraction * len(labels) + 0.5)))
    n_val = np.clip(n_val, (counts >= 2).astype(np.int64), np.maximum(counts - 1, 0))
    if n_val.sum() == 0:
        raise ValueError(f"Cannot split {len(labels)} examples into train and validation: expected at least one class "
                         f"with two or more examples; found class sizes {counts.tolist()}.")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, k in zip(classes, n_val):
        members = rng.permutation(np.flatnonzero(labels == label))
        val.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` examples, classes kept in proportion (deterministic).

    Uses its own random stream (``default_rng([seed, 1])``), independent of the split's.
    """
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng([seed, 1])
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:k]
              for label, k in zip(classes, _allocate(counts, limit))]
    return np.sort(np.concatenate(chosen))


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of an NCHW float tensor to ``size x size`` (``align_corners=False``), in chunks."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if len(x) == 0:
        return x.new_empty((0, x.shape[1], size, size))
    parts = [F.interpolate(x[i:i + _RESIZE_CHUNK], size=(size, size), mode="bilinear", align_corners=False)
             for i in range(0, len(x), _RESIZE_CHUNK)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    """RGB -> one luma channel (the weights of Pillow's ``convert("L")``)."""
    weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _prepare(x: np.ndarray, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Float32 copy of raw NCHW images, turned grayscale if asked, then resized."""
    tensor = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    if channels == 1 and tensor.shape[1] == 3:
        tensor = _to_gray(tensor)
    if image_size is not None:
        tensor = resize(tensor, image_size)
    return tensor


def finalize(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             classes: tuple[str, ...], *, image_size: int | None, seed: int, limit: int | None,
             channels: int | None) -> Dataset:
    """Build the :class:`Dataset` from raw NCHW arrays (any real dtype) and integer labels.

    Applies, in order: the stratified ``limit`` on the training set, RGB -> gray
    (``channels=1``), the resize to ``image_size`` (``None`` keeps the size), normalisation
    with the training set's per-channel mean and std, and gray -> RGB (``channels=3``).
    """
    if limit is not None:
        keep = stratified_subset(y_train, limit, seed)
        if len(keep) < len(y_train):
            x_train, y_train = x_train[keep], y_train[keep]
    train = _prepare(x_train, image_size, channels)
    val = _prepare(x_val, image_size, channels)
    if train.shape[1:] != val.shape[1:]:
        raise ValueError(f"{name}: expected training and validation images of the same (C, H, W); found "
                         f"{tuple(train.shape[1:])} and {tuple(val.shape[1:])} (pass image_size to resize both).")
    std, mean = torch.std_mean(train, dim=(0, 2, 3), correction=0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    for tensor in (train, val):
        tensor.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    if channels == 3 and train.shape[1] == 1:
        train, val = train.repeat(1, 3, 1, 1), val.repeat(1, 3, 1, 1)
    return Dataset(name=name, x_train=train, y_train=torch.tensor(np.asarray(y_train, dtype=np.int64)),
                   x_val=val, y_val=torch.tensor(np.asarray(y_val, dtype=np.int64)), classes=tuple(classes))
