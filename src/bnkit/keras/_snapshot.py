"""An untrusted HDF5 file as plain data: its groups, attributes and dataset layouts.

The worker process (:mod:`._probe`) lets libhdf5 parse the file and sends back a JSON
*snapshot*: every group reached by hard links with its attributes, and for every dataset
its dtype, shape, storage layout, byte offset or chunk index, and filters.  This process
never hands the file to libhdf5: it reads the snapshot through the small h5py-like API
below (``"name" in group``, ``group[name]``, ``group.keys()``, ``obj.attrs``), and reads
values itself, with ``os.preadv`` into the destination buffers, from byte ranges checked
against the file's size.  Chunked datasets are decoded here (deflate with an output cap,
shuffle, Fletcher-32), the only filters :func:`~bnkit.keras._h5.dataset_problem` lets through.
"""
from __future__ import annotations

import base64
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KerasFormatError

__all__ = ["StoredDataset", "StoredFile", "StoredGroup", "decode_attribute"]

CONTIGUOUS, CHUNKED, COMPACT = "contiguous", "chunked", "compact"
DEFLATE, SHUFFLE, FLETCHER32 = 1, 2, 3


class _Attributes(dict):  # type: ignore[type-arg]
    """Attribute values; one the worker could not read raises OSError (its message) when used."""

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if isinstance(value, _Broken):
            raise OSError(value.message)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name] if name in self else default


class _Broken:
    def __init__(self, message: str) -> None:
        self.message = message


def decode_attribute(encoded: dict[str, Any]) -> Any:
    """An attribute value as h5py returns it, from the worker's JSON form."""
    kind = encoded.get("t")
    if kind == "s":
        return str(encoded["v"])
    if kind == "b":
        return bytes.fromhex(encoded["v"])
    if kind == "a":
        items = [decode_attribute(item) for item in encoded["v"]]
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(encoded["shape"])
    if kind == "n":
        return np.asarray(encoded["v"], dtype=np.dtype(encoded["dtype"])).reshape(encoded["shape"])
    return _Broken(str(encoded.get("v", "an unreadable attribute")))


class StoredGroup:
    """A group of the snapshot: members by name and attributes."""

    def __init__(self, tree: dict[str, Any], path: str, file: StoredFile | None) -> None:
        self.name = path or "/"
        self.file = file if file is not None else self  # type: ignore[assignment]
        self.attrs = _Attributes((name, decode_attribute(value)) for name, value in tree.get("attrs", {}).items())
        self._members: dict[str, dict[str, Any]] = tree.get("members", {})
        self._opened: dict[str, StoredGroup | StoredDataset] = {}

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __getitem__(self, name: str) -> StoredGroup | StoredDataset:
        node: StoredGroup | StoredDataset = self
        for part in name.strip("/").split("/"):
            if not isinstance(node, StoredGroup):
                raise KeyError(name)
            node = node._child(part)
        return node

    def _child(self, part: str) -> StoredGroup | StoredDataset:
        if part not in self._opened:
            tree = self._members.get(part)
            if tree is None:
                raise KeyError(part)
            path = f"{self.name.rstrip('/')}/{part}"
            file = self.file
            self._opened[part] = (StoredDataset(tree, path, file) if tree.get("kind") == "dataset"
                                  else StoredGroup(tree, path, file))
        return self._opened[part]

    def keys(self) -> list[str]:
        return list(self._members)

    def __iter__(self) -> Any:
        return iter(self.keys())


class StoredFile(StoredGroup):
    """The root of a snapshot, reading values from ``size`` bytes at ``start`` of ``path``."""

    def __init__(self, tree: dict[str, Any], path: Path, start: int, size: int, label: object) -> None:
        self.path, self.start, self.size, self.label = Path(path), start, size, label
        self._fd: int | None = None
        super().__init__(tree, "", None)
        self.file = self

    def pread(self, address: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes at ``address`` (relative to the HDF5 file), checked."""
        if address < 0 or address + len(view) > self.size:
            raise KerasFormatError(
                f"{self.label}: a dataset's bytes {address:,}..{address + len(view):,} lie outside the file "
                f"({self.size:,} bytes): truncated or corrupt"
            )
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        done = 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], self.start + address + done)
            if count <= 0:
                raise KerasFormatError(f"{self.label}: the file ended while reading a dataset (truncated)")
            done += count

    def forget_structure(self) -> None:
        """Drop the groups and attributes; the datasets already taken keep what they need.

        Once a load has indexed the weights (names, shapes, storage), the rest of the
        snapshot is garbage: freed then, its memory serves the model's objects.  Looking a
        member up afterwards raises KeyError.
        """
        self._members, self._opened = {}, {}
        self.attrs = _Attributes()

    def close(self) -> None:
        """Close the file descriptor and drop the structure (:meth:`forget_structure`): the
        groups point back at the file, so without this they would wait for the cycle
        collector.  Datasets already taken can still read."""
        self.forget_structure()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StoredDataset:
    """A dataset of the snapshot; values are read by :meth:`read_rows`."""

    def __init__(self, tree: dict[str, Any], path: str, file: StoredFile) -> None:
        self.name, self.file = path, file
        self.error = tree.get("error")
        self.kind_of_type = str(tree.get("dtype", "?"))
        try:
            self.dtype = np.dtype(self.kind_of_type)
        except TypeError:
            self.dtype = np.dtype(object)
        shape = tree.get("shape")
        self.shape = tuple(int(d) for d in shape) if isinstance(shape, list) else None
        self.size = math.prod(self.shape) if self.shape is not None else 0
        self.layout = tree.get("layout")
        self.offset = tree.get("offset")
        self.storage = int(tree.get("storage") or 0)
        self.filters: list[int] = [int(f) for f in tree.get("filters", [])]
        self.chunk_shape = tuple(int(c) for c in tree.get("chunk_shape") or ())
        self.chunks: list[list[Any]] = tree.get("chunks") or []
        self.compact = base64.b64decode(tree["data"]) if tree.get("data") else None
        self._decoded: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def read_rows(self, buffer: np.ndarray, start: int = 0, stop: int | None = None) -> None:
        """Rows ``start:stop`` of the leading axis (everything for scalars) into the contiguous ``buffer``."""
        if self.shape is None or not buffer.flags.c_contiguous:
            raise ValueError(f"dataset {self.name}: cannot read into this buffer")
        rows = self.shape[0] if self.shape else 1
        stop = rows if stop is None else stop
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"dataset {self.name}: rows {start}:{stop} outside its {rows} rows")
        row_items = math.prod(self.shape[1:]) if self.shape else 1
        self.read_items(buffer.reshape(-1)[:(stop - start) * row_items], start * row_items)

    def read_items(self, target: np.ndarray, first: int = 0) -> None:
        """Values ``first, first + 1, ...`` of the flattened dataset into the contiguous 1-D ``target``
        (converted to its dtype), e.g. straight into a tensor's memory.

        Contiguous storage is read with ``preadv`` into ``target`` itself when the dtypes agree
        (else through a temporary of ``target``'s size).  Chunked storage is decoded whole,
        into ``target`` when it asks for all values in the stored dtype, else into a
        temporary kept until the last value has been read.
        """
        count = target.size
        if self.shape is None or target.ndim != 1 or not target.flags.c_contiguous:
            raise ValueError(f"dataset {self.name}: cannot read into this buffer")
        if not 0 <= first <= first + count <= self.size:
            raise ValueError(f"dataset {self.name}: values {first}:{first + count} outside its {self.size}")
        if self.layout == CHUNKED:
            if count == self.size and target.dtype == self.dtype and self._decoded is None:
                self._decode_chunks(target.reshape(self.shape))
                return
            if self._decoded is None:
                self._decoded = self._decode_chunks(np.empty(self.shape, dtype=self.dtype))
            target[...] = self._decoded.reshape(-1)[first:first + count]
            if first + count == self.size:
                self._decoded = None  # read to the end: a later read decodes again
            return
        raw = target if target.dtype == self.dtype else np.empty(count, dtype=self.dtype)
        if self.layout == CONTIGUOUS:
            self.file.pread(int(self.offset) + first * self.dtype.itemsize, memoryview(raw).cast("B"))
        else:
            if self.compact is None or len(self.compact) < self.nbytes:
                raise KerasFormatError(
                    f"{self.file.label}: dataset {self.name}: its {self.layout} storage is shorter than its shape")
            raw[...] = np.frombuffer(self.compact, dtype=self.dtype, count=self.size)[first:first + count]
        if raw is not target:
            target[...] = raw  # dtype and byte-order conversion

    def _decode_chunks(self, values: np.ndarray) -> np.ndarray:
        """Decode every chunk into ``values`` (the dataset's shape and dtype)."""
        chunk = tuple(int(c) for c in self.chunk_shape)
        chunk_bytes = math.prod(chunk) * self.dtype.itemsize
        for coords, address, size, mask in self.chunks:
            raw = bytearray(int(size))
            self.file.pread(int(address), memoryview(raw))
            data = self._unfilter(bytes(raw), int(mask), chunk_bytes)
            block = np.frombuffer(data, dtype=self.dtype).reshape(chunk)
            where = tuple(slice(int(c), min(int(c) + n, d)) for c, n, d in zip(coords, chunk, self.shape or ()))
            values[where] = block[tuple(slice(0, s.stop - s.start) for s in where)]
        return values

    def _unfilter(self, data: bytes, mask: int, chunk_bytes: int) -> bytes:
        for index in reversed(range(len(self.filters))):
            if mask & (1 << index):
                continue
            kind = self.filters[index]
            if kind == FLETCHER32:
                data = data[:-4]
            elif kind == DEFLATE:
                inflater = zlib.decompressobj()
                out = inflater.decompress(data, chunk_bytes + 1)
                if len(out) > chunk_bytes:
                    raise KerasFormatError(f"{self.file.label}: dataset {self.name}: a chunk inflates past its size")
                data = out
            elif kind == SHUFFLE:
                item = self.dtype.itemsize
                whole = len(data) // item * item
                data = np.frombuffer(data[:whole], np.uint8).reshape(item, -1).T.tobytes() + data[whole:]
        if len(data) != chunk_bytes:
            raise KerasFormatError(
                f"{self.file.label}: dataset {self.name}: a chunk decodes to {len(data):,} bytes; expected {chunk_bytes:,}")
        return data

