"""Check HDF5 global heap collections before h5py decodes any string attribute.

Keras stores ``model_config``, ``layer_names`` and ``weight_names`` as variable-length
strings, which live in *global heap collections* (HDF5 spec, III.E: ``"GCOL"``, version,
collection size, then objects of ``index, refcount, reserved, size, data`` padded to 8
bytes).  HDF5 1.14 can loop forever when an object size inside a collection is corrupt, so
every collection in the file's metadata is walked here first (the bytes outside the
weight datasets, found without reading any attribute) and a broken one raises
:class:`~bnkit.keras.KerasFormatError`.
"""
from __future__ import annotations

import struct
from typing import IO, Any

from .errors import KerasFormatError

__all__ = ["check_global_heaps"]

_SIGNATURE = b"GCOL"
_HEADER = 16  # signature 4, version 1, reserved 3, collection size 8
_OBJECT_HEADER = 16  # index 2, refcount 2, reserved 4, size 8
_MIN_COLLECTION = 4096


def _extents(h5: Any) -> list[tuple[int, int]]:
    """(offset, size) of every contiguous dataset's raw data (no attribute is read)."""
    extents: list[tuple[int, int]] = []

    def visit(name: str, obj: Any) -> None:
        dataset_id = getattr(obj, "id", None)
        if dataset_id is not None and hasattr(dataset_id, "get_offset"):
            offset = dataset_id.get_offset()
            if offset is not None:
                extents.append((int(offset), int(dataset_id.get_storage_size())))

    h5.visititems(visit)
    return sorted(extents)


def _gaps(extents: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    gaps, position = [], 0
    for offset, length in extents:
        if offset > position:
            gaps.append((position, offset))
        position = max(position, offset + length)
    if position < size:
        gaps.append((position, size))
    return gaps


def check_global_heaps(h5: Any, handle: IO[bytes], size: int, label: object) -> None:
    """Walk every global heap collection found outside the datasets; raise if one is broken."""
    for start, stop in _gaps(_extents(h5), size):
        handle.seek(start)
        region = handle.read(stop - start)
        found = region.find(_SIGNATURE)
        while found >= 0:
            _check_collection(handle, start + found, size, label)
            found = region.find(_SIGNATURE, found + 1)


def _check_collection(handle: IO[bytes], offset: int, size: int, label: object) -> None:
    handle.seek(offset)
    header = handle.read(_HEADER)
    if len(header) < _HEADER or header[4] != 1:
        return  # "GCOL" inside other bytes, not a version-1 collection header
    (length,) = struct.unpack_from("<Q", header, 8)
    if length < _MIN_COLLECTION or offset + length > size:
        raise _corrupt(label, offset, f"a collection of 4096 bytes or more inside the file ({size:,} bytes)", length)
    body = handle.read(length - _HEADER)
    position = 0
    while position + _OBJECT_HEADER <= len(body):
        index, _, _, object_size = struct.unpack_from("<HHIQ", body, position)
        if index == 0:  # the free-space object: it spans the rest of the collection
            if object_size != len(body) - position:
                raise _corrupt(label, offset, f"free space of {len(body) - position:,} bytes", object_size)
            return
        padded = (object_size + 7) & ~7
        if position + _OBJECT_HEADER + padded > len(body):
            raise _corrupt(label, offset, f"object {index} to fit the remaining "
                           f"{len(body) - position - _OBJECT_HEADER:,} bytes", object_size)
        position += _OBJECT_HEADER + padded


def _corrupt(label: object, offset: int, expected: str, received: int) -> KerasFormatError:
    return KerasFormatError(
        f"{label}: corrupt HDF5 global heap (string storage) at byte {offset}: expected {expected}; "
        f"the file declares {received:,} bytes"
    )
