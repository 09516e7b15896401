"""Copy HDF5 datasets (Keras layout) into torch tensors (torch layout), fast and in little memory.

Each dataset (of a :mod:`._snapshot`: bytes at checked offsets, read with ``preadv``) is
copied into its tensor's Keras view (a Dense kernel ``K (IN, U)`` -> ``weight (U, IN)``, a
convolution kernel ``(*spatial, I, O)`` -> ``(O, I, *spatial)``...).  A tensor in CPU memory
is reached through a NumPy array over that memory with the view's shape and strides
(:func:`_numpy_view`), so torch's copy kernels are never run (nor their code paged in):

* *direct*: the view is contiguous in the dataset's order (biases, BN vectors, 1x1
  depthwise kernels): the bytes are read straight into the tensor's memory, with no buffer
  and no copy;
* *strided*: anything else (transposed kernels, depthwise kernels, recurrent gates): blocks
  of consecutive values are read into one buffer and assigned by NumPy to their slab of the
  view (runs of input rows of a Dense kernel, whole kernels or runs of input rows at each
  kernel position).

A tensor on another device (or of a dtype NumPy lacks) takes torch's routes: *transposed*
(a kernel, seen as ``(P * I, O)`` rows, read in blocks that torch's 2-D transpose puts into
a contiguous scratch, then copied into the weight) or *rows* (blocks of leading rows
copied into the strided view).

Blocks hold about 1/:data:`BLOCK_FRACTION` of all the weights copied, between
:data:`MIN_BLOCK_BYTES` and :data:`BLOCK_BYTES` (one row, if a single row is larger), and the
read buffer (and the scratch) are shared by every dataset of a load: a load needs at most
two blocks beyond the weights themselves, a few percent of them.  Everything runs on the
calling thread, each block moved right after it is read; torch's copies go in pieces small
enough to run without its worker threads (:data:`SERIAL_ELEMENTS`): handing blocks to
another thread cost more than the overlap gained (and a thread's stack and malloc arena).
"""
from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ._h5 import translating
from .errors import KerasFormatError

__all__ = ["BLOCK_BYTES", "copy_all"]

#: Datasets are read in blocks (direct reads excepted) of 1/BLOCK_FRACTION of the weights copied,
#: at least MIN_BLOCK_BYTES (fewer, slower blocks below), at most BLOCK_BYTES.
BLOCK_FRACTION = 256
MIN_BLOCK_BYTES = 64 * 1024
BLOCK_BYTES = 4 * 1024 * 1024
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}

#: Copies of at most this many elements run on the calling thread (torch's grain size): moves
#: are cut into such pieces, so they never wait on torch's worker threads, which costs a
#: scheduling slice per copy when the machine is busy.
SERIAL_ELEMENTS = 32768

Move = Callable[[], None]


class _Buffers:
    """One read buffer and one scratch tensor, grown on demand, for a whole load (a block is
    moved before the next one is read, so one of each serves every dataset)."""

    def __init__(self, block: int) -> None:
        self.block = block
        self._read = np.empty(0, dtype=np.uint8)
        self._scratch = torch.empty(0, dtype=torch.uint8)

    def read(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self._read.nbytes < nbytes:
            self._read = np.empty(max(nbytes, self.block), dtype=np.uint8)
        return self._read[:nbytes].view(dtype).reshape(shape)

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if self._scratch.numel() < nbytes:
            self._scratch = torch.empty(max(nbytes, self.block), dtype=torch.uint8)
        return self._scratch[:nbytes].view(dtype).view(shape)


def copy_all(jobs: list[tuple[Any, torch.Tensor, str]]) -> None:
    """Copy every ``(dataset, keras_view, label)``, block by block, under ``torch.no_grad``.

    Raises KerasFormatError naming the dataset when one cannot be read; the jobs before it
    are then already copied (the caller says so).
    """
    total = sum(target.numel() * target.element_size() for _, target, _ in jobs)
    buffers = _Buffers(min(max(total // BLOCK_FRACTION, MIN_BLOCK_BYTES), BLOCK_BYTES))
    with torch.no_grad():
        for dataset, target, label in jobs:
            blocks = _moves(dataset, target, label, buffers)
            while True:
                with translating(label, "read the dataset"):
                    move = next(blocks, None)
                if move is None:
                    break
                with translating(label, "copy the dataset into its tensor"):
                    move()


def _moves(dataset: Any, target: torch.Tensor, label: str, buffers: _Buffers) -> Iterator[Move]:
    """Read ``dataset`` block by block; after each read, yield the function moving the block
    (nothing for a direct read, which is finished when this returns)."""
    shape = tuple(int(d) for d in dataset.shape)
    if math.prod(shape) != target.numel():
        raise KerasFormatError(
            f"{label}: expected {target.numel():,} values; the file holds {math.prod(shape):,} (shape {shape})"
        )
    if target.numel() == 0:
        return
    dtype = _NUMPY_DTYPES.get(target.dtype)
    rank = len(shape)
    memory = _numpy_view(target) if dtype is not None and target.device.type == "cpu" else None
    if memory is not None and memory.flags.c_contiguous:
        _direct(dataset, memory.reshape(-1), buffers.block)
    elif memory is not None:
        yield from _strided(dataset, memory, buffers)
    elif dtype is not None and rank >= 2 and tuple(target.shape) == shape \
            and target.permute(rank - 1, rank - 2, *range(rank - 2)).is_contiguous():
        yield from _transposed(dataset, target, shape, dtype, buffers)
    else:
        yield from _rows(dataset, target, shape, dtype or np.float32, buffers)


def _numpy_view(target: torch.Tensor) -> np.ndarray | None:
    """A NumPy array over ``target``'s memory (a CPU tensor of a NumPy dtype) with its shape
    and strides; None when elements overlap (a zero stride) or there are none.

    Made from the memory's address (checked to lie inside the tensor's storage) rather than
    by ``Tensor.numpy()``, whose first use in a process touches ~0.3 MB of torch's code.  The
    array does not keep ``target`` alive: it is used only while the caller holds the tensor.
    Plain tensors and parameters only (None for subclasses, which take torch's routes).
    """
    if type(target) not in (torch.Tensor, nn.Parameter) or target.layout != torch.strided:
        return None  # a tensor subclass may not hold its values at data_ptr()
    sizes, strides = tuple(target.shape), tuple(target.stride())
    if target.numel() == 0 or any(size > 1 and stride <= 0 for size, stride in zip(sizes, strides)):
        return None
    itemsize = target.element_size()
    span = (sum((size - 1) * stride for size, stride in zip(sizes, strides)) + 1) * itemsize
    storage = target.untyped_storage()
    start = target.data_ptr()
    if not storage.data_ptr() <= start or start + span > storage.data_ptr() + storage.nbytes():
        return None
    memory = (ctypes.c_char * span).from_address(start)
    return np.ndarray(sizes, dtype=_NUMPY_DTYPES[target.dtype], buffer=memory,
                      strides=tuple(stride * itemsize for stride in strides))


def _direct(dataset: Any, flat: np.ndarray, block: int) -> None:
    """The values straight into the tensor's memory ``flat`` (whole, or by blocks when converting a dtype)."""
    step = flat.size if dataset.dtype == flat.dtype else block // max(dataset.dtype.itemsize, 1)
    step = max(step, 1)
    for first in range(0, flat.size, step):
        dataset.read_items(flat[first:first + step], first)


def _strided(dataset: Any, view: np.ndarray, buffers: _Buffers) -> Iterator[Move]:
    """Any other layout in CPU memory (transposed kernels, depthwise kernels, gates): blocks
    of consecutive values, each assigned by NumPy to its slab of ``view`` (the tensor's
    memory in Keras' layout): a run of indices along one axis, with every index of the
    axes after it and fixed indices before it.  The axis is the first one whose single
    index fits in a block: a Dense kernel ``(IN, U)`` goes by runs of input rows, a
    convolution kernel ``(*spatial, I, O)`` by whole kernels or runs of input rows at each
    position.  NumPy writes along the destination's contiguous axis (the slab's transpose
    stays in cache) on the calling thread."""
    shape, itemsize = view.shape, view.itemsize
    axis = next(a for a in range(len(shape)) if math.prod(shape[a + 1:]) * itemsize <= buffers.block
                or a == len(shape) - 1)
    inner, length = math.prod(shape[axis + 1:]), shape[axis]
    step = max(1, buffers.block // (inner * itemsize))
    for position, outer in enumerate(np.ndindex(*shape[:axis])):
        for start in range(0, length, step):
            stop = min(start + step, length)
            block = buffers.read((stop - start,) + shape[axis + 1:], view.dtype)
            dataset.read_items(block.reshape(-1), (position * length + start) * inner)
            yield _assigner(view[outer + (slice(start, stop),)], block)


def _assigner(slab: np.ndarray, block: np.ndarray) -> Move:
    def move() -> None:
        slab[...] = block

    return move


def _transposed(dataset: Any, target: torch.Tensor, shape: tuple[int, ...], dtype: Any,
                buffers: _Buffers) -> Iterator[Move]:
    """Kernel ``(*spatial, I, O)`` into the contiguous ``weight (O, I, *spatial)`` (``target`` is
    its Keras view): blocks of whole positions, or of input rows within one position when a
    position holds more than a block."""
    *spatial, inputs, outputs = shape
    positions = math.prod(spatial)
    rank = len(shape)
    weight = target.permute(rank - 1, rank - 2, *range(rank - 2)).view(outputs, inputs, positions)
    rows = max(1, buffers.block // max(outputs * np.dtype(dtype).itemsize, 1))
    if rows >= inputs:
        rows -= rows % inputs
    total = positions * inputs
    start = 0
    while start < total:
        position = start // inputs
        stop = min(start + rows, total) if rows >= inputs else min(start + rows, (position + 1) * inputs)
        block = buffers.read((stop - start, outputs), dtype)
        dataset.read_items(block.reshape(-1), start * outputs)
        source = torch.from_numpy(block).T  # (O, rows)
        if rows >= inputs:
            count = (stop - start) // inputs
            slab = weight[:, :, position:position + count]
            yield _via_scratch(slab, source, buffers, lambda scratch, n=count: scratch.view(outputs, n, inputs)
                               .permute(0, 2, 1))
        else:
            slab = weight[:, start - position * inputs:stop - position * inputs, position]
            yield _via_scratch(slab, source, buffers, lambda scratch: scratch)
        start = stop


def _via_scratch(target: torch.Tensor, source: torch.Tensor, buffers: _Buffers,
                 shaped: Callable[[torch.Tensor], torch.Tensor]) -> Move:
    """Transpose ``source (O, n)`` into the shared contiguous scratch (fast), then copy it into
    ``target`` (``O`` leading too), a few output rows at a time (see :data:`SERIAL_ELEMENTS`)."""
    scratch = buffers.scratch(tuple(source.shape), target.dtype)
    final = shaped(scratch)
    step = _serial_rows(source)

    def move() -> None:
        for start in range(0, source.shape[0], step):
            stop = start + step
            scratch[start:stop].copy_(source[start:stop])
            target[start:stop].copy_(final[start:stop])

    return move


def _serial_rows(tensor: torch.Tensor) -> int:
    """How many leading rows of ``tensor`` one serial copy takes."""
    row = tensor[0].numel() if tensor.dim() and tensor.shape[0] else 1
    return max(1, SERIAL_ELEMENTS // max(row, 1))


def _rows(dataset: Any, target: torch.Tensor, shape: tuple[int, ...], dtype: Any,
          buffers: _Buffers) -> Iterator[Move]:
    """Any other layout: whole, or blocks of leading rows copied into the strided view."""
    itemsize = np.dtype(dtype).itemsize
    groups = shape[0] // target.shape[0] if target.dim() and shape and target.shape[0] else 0
    blockable = target.dim() >= 1 and len(shape) >= 1 and groups >= 1 and shape[0] == groups * target.shape[0]
    if not blockable or target.numel() * itemsize <= buffers.block:
        whole = buffers.read(shape, dtype)
        if whole.size:
            dataset.read_items(whole.reshape(-1))
        yield _mover(target, torch.from_numpy(whole).reshape(target.shape))
        return
    rows = max(1, buffers.block // max(target[0].numel() * itemsize, 1))
    tail = tuple(target.shape[1:])
    for start in range(0, target.shape[0], rows):
        stop = min(start + rows, target.shape[0])
        count = (stop - start) * groups
        buffer = buffers.read((count,) + shape[1:], dtype)
        dataset.read_rows(buffer, start * groups, stop * groups)
        yield _mover(target[start:stop], torch.from_numpy(buffer).reshape((stop - start,) + tail))


def _mover(target: torch.Tensor, source: torch.Tensor) -> Move:
    """Copy ``source`` into ``target`` (same shape), a few leading rows at a time."""
    step = _serial_rows(target)

    def move() -> None:
        if target.dim() == 0:
            target.copy_(source)
        for start in range(0, target.shape[0] if target.dim() else 0, step):
            target[start:start + step].copy_(source[start:start + step])

    return move
