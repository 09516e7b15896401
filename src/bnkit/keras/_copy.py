"""Copy HDF5 datasets (Keras layout) into torch tensors (torch layout), fast and in bounded memory.

Each dataset (of a :mod:`._snapshot`: bytes at checked offsets, read with ``preadv``) is
read by blocks of leading rows into reusable NumPy buffers; each block is then moved into
its tensor by torch.  Reading (on the calling thread) and moving (torch, which
releases the GIL, on one worker thread) overlap, block by block, with two buffers per
dataset so a block is never overwritten while it is being moved.

Layout changes use torch's fast 2-D transpose, which needs a contiguous destination:

* Dense kernel ``K (IN, U)`` -> ``weight (U, IN)``: row blocks of ``K`` go through a
  contiguous scratch into their column slab of ``weight``;
* Conv2D kernel ``HWIO`` -> ``OIHW``: a 2-D transpose to ``OHWI``, then a small permute;
* anything else: blocks of whole leading rows (at most :data:`BLOCK_BYTES`) copied into
  the strided view.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ._h5 import translating
from .errors import KerasFormatError

__all__ = ["BLOCK_BYTES", "copy_all"]

#: Datasets larger than this are read in blocks of about this size.
BLOCK_BYTES = 64 * 1024 * 1024
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

Move = Callable[[], None]


def copy_all(jobs: list[tuple[Any, torch.Tensor, str]]) -> None:
    """Copy every ``(dataset, keras_view, label)``; each read overlaps the previous block's move.

    Raises KerasFormatError naming the dataset when one cannot be read; the jobs before it
    are then already copied (the caller says so).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnkit-keras-copy") as pool:
        pending: tuple[Future[None], str] | None = None
        for dataset, target, label in jobs:
            with translating(label, "read the dataset"):
                for move in _moves(dataset, target, label):
                    _finish(pending)
                    pending = (pool.submit(_without_grad, move), label)
        _finish(pending)


def _without_grad(move: Move) -> None:
    with torch.no_grad():  # grad mode is per thread
        move()


def _finish(pending: tuple[Future[None], str] | None) -> None:
    if pending is not None:
        future, label = pending
        with translating(label, "copy the dataset into its tensor"):
            future.result()


def _moves(dataset: Any, target: torch.Tensor, label: str) -> Iterator[Move]:
    """Read ``dataset`` block by block; after each read, yield the function moving the block."""
    shape = tuple(int(d) for d in dataset.shape)
    if math.prod(shape) != target.numel():
        raise KerasFormatError(
            f"{label}: expected {target.numel():,} values; the file holds {math.prod(shape):,} (shape {shape})"
        )
    dtype = _NUMPY_DTYPES.get(target.dtype, np.float32)
    if len(shape) == 2 and target.dim() == 2 and target.stride(0) == 1 and target.T.is_contiguous():
        yield from _row_slabs(dataset, target.T, shape, dtype)
    elif len(shape) == 4 and target.dim() == 4 and target.permute(3, 2, 0, 1).is_contiguous() \
            and target.numel() * np.dtype(dtype).itemsize <= BLOCK_BYTES:
        yield from _conv(dataset, target.permute(3, 2, 0, 1), shape, dtype)
    else:
        yield from _rows(dataset, target, shape, dtype)


def _read(dataset: Any, buffer: np.ndarray) -> np.ndarray:
    if buffer.size:
        dataset.read_rows(buffer)
    return buffer


def _row_slabs(dataset: Any, weight: torch.Tensor, shape: tuple[int, ...], dtype: Any) -> Iterator[Move]:
    """Kernel ``K (IN, U)`` into ``weight (U, IN)`` by contiguous row blocks of ``K``: each block
    is transposed into a contiguous scratch (fast), then copied into its column slab."""
    features, units = shape
    rows = max(1, min(features, BLOCK_BYTES // max(units * np.dtype(dtype).itemsize, 1)))
    buffers = [np.empty((rows, units), dtype=dtype) for _ in range(2 if rows < features else 1)]
    scratch = torch.empty((units, rows), dtype=weight.dtype)
    for index, start in enumerate(range(0, features, rows)):
        stop = min(start + rows, features)
        block = buffers[index % len(buffers)][: stop - start]
        dataset.read_rows(block, start, stop)
        yield _via_scratch(weight[:, start:stop], torch.from_numpy(block).T,
                           scratch if stop - start == rows else torch.empty((units, stop - start), dtype=weight.dtype))


def _via_scratch(target: torch.Tensor, source: torch.Tensor, scratch: torch.Tensor) -> Move:
    def move() -> None:
        scratch.copy_(source)
        target.copy_(scratch)

    return move


def _conv(dataset: Any, weight: torch.Tensor, shape: tuple[int, ...], dtype: Any) -> Iterator[Move]:
    """Kernel ``HWIO`` into the contiguous ``weight (O, I, H, W)`` via a 2-D transpose to OHWI."""
    height, width, inputs, outputs = shape
    kernel = _read(dataset, np.empty(shape, dtype=dtype))

    def move() -> None:
        ohwi = torch.from_numpy(kernel).reshape(height * width * inputs, outputs).T.contiguous()
        weight.copy_(ohwi.view(outputs, height, width, inputs).permute(0, 3, 1, 2))

    yield move


def _rows(dataset: Any, target: torch.Tensor, shape: tuple[int, ...], dtype: Any) -> Iterator[Move]:
    """Any other layout: whole, or blocks of leading rows copied into the strided view."""
    itemsize = np.dtype(dtype).itemsize
    groups = shape[0] // target.shape[0] if target.dim() and shape and target.shape[0] else 0
    blockable = target.dim() >= 1 and len(shape) >= 1 and groups >= 1 and shape[0] == groups * target.shape[0]
    if not blockable or target.numel() * itemsize <= BLOCK_BYTES:
        whole = _read(dataset, np.empty(shape, dtype=dtype))
        yield _mover(target, torch.from_numpy(whole).reshape(target.shape))
        return
    rows = max(1, BLOCK_BYTES // max(target[0].numel() * itemsize, 1))
    buffers = [np.empty((rows * groups,) + shape[1:], dtype=dtype) for _ in range(2)]
    tail = tuple(target.shape[1:])
    for index, start in enumerate(range(0, target.shape[0], rows)):
        stop = min(start + rows, target.shape[0])
        count = (stop - start) * groups
        buffer = buffers[index % 2]
        dataset.read_rows(buffer[:count], start * groups, stop * groups)
        yield _mover(target[start:stop], torch.from_numpy(buffer[:count]).reshape((stop - start,) + tail))


def _mover(target: torch.Tensor, source: torch.Tensor) -> Move:
    def move() -> None:
        target.copy_(source)

    return move
