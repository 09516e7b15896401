"""Safe HDF5 access: lazy ``h5py``, attribute decoding, checked dataset reads.

Everything that opens or inspects HDF5 goes through here, so a damaged file surfaces as one
:class:`~bnkit.keras.KerasFormatError` naming the file and what was being read, never as an
``OSError`` or ``KeyError`` from deep inside h5py.  :func:`open_h5` hands untrusted files
to libhdf5 only in a worker process (:mod:`._probe`) and returns their snapshot
(:mod:`._snapshot`); :func:`open_checked` is what the worker runs.  Datasets are checked
before they are read (floating dtype, allowed filters, storage inside the file and
consistent with the declared shape); :mod:`._copy` reads them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from .._repr import short
from ._guard import check_confined
from ._heap import check_global_heaps
from ._snapshot import StoredDataset, StoredFile
from .errors import KerasFormatError

__all__ = ["dataset_problem", "h5py_module", "open_checked", "open_h5", "read_json_attr", "read_names", "translating"]

#: HDF5's sieve buffer for reads: column slabs of a kernel read 4 MiB at a time.
SIEVE_BYTES = 4 * 1024 * 1024
#: A compressed dataset may expand at most this much over its stored bytes (+ EXPANSION_SLACK):
#: the file size then bounds the memory the declared shapes make a load allocate.  Real
#: weights compress about 1.1x; Keras itself never compresses.
MAX_EXPANSION = 100
EXPANSION_SLACK = 64 * 1024
#: HDF5 filters a weight dataset may use (h5repack's usual ones): deflate, shuffle, Fletcher-32.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32"}
#: Errors h5py, numpy and json raise on damaged input; they become KerasFormatError.
_LOW_LEVEL_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError,
                     IndexError, UnicodeDecodeError, OverflowError, MemoryError, EOFError,
                     zipfile.BadZipFile, zlib.error)


def h5py_module() -> ModuleType:
    """Import h5py on first use, with an actionable message when it is missing."""
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading and writing Keras files needs the optional dependency h5py, which is not "
            "installed; install it with `pip install 'bnkit[keras]'` (or `pip install h5py`)."
        ) from error
    return h5py


@contextlib.contextmanager
def translating(source: object, doing: str) -> Iterator[None]:
    """Turn low-level errors raised while ``doing`` into one KerasFormatError."""
    try:
        yield
    except KerasFormatError:
        raise
    except _LOW_LEVEL_ERRORS as error:
        raise KerasFormatError(
            f"{source}: could not {doing}: the file is damaged or not a Keras file "
            f"(expected a readable HDF5 layout; received {type(error).__name__}: {error})"
        ) from error


def open_h5(source: str | os.PathLike[str] | IO[bytes], label: object) -> StoredFile:
    """An untrusted HDF5 file (a path, or a file object with a ``window``), as a snapshot.

    libhdf5 parses the file in a worker process only (:mod:`._probe`); the caller gets a
    :class:`~bnkit.keras._snapshot.StoredFile` with the same reading API as ``h5py.File``
    for groups and attributes, whose datasets read their bytes with checked offsets.  File
    objects must say which bytes of which file they are: ``window = (path, offset, size)``.
    """
    from ._probe import probe

    if isinstance(source, (str, os.PathLike)):
        path, offset, size = Path(source), 0, None
    elif getattr(source, "window", None) is not None:
        path, offset, size = source.window  # type: ignore[union-attr]
    else:
        raise TypeError(f"{label}: expected a path or a file window; received {type(source).__name__}")
    with translating(label, "open it as HDF5"):
        stat_size = os.path.getsize(path)
    size = stat_size - offset if size is None else size
    return StoredFile(probe(path, label, offset, size), Path(path), offset, size, label)


def open_checked(source: str | os.PathLike[str] | IO[bytes], label: object) -> Any:
    """Open an HDF5 file read-only; refuse links or storage outside it and corrupt string heaps."""
    h5py = h5py_module()
    with translating(label, "open it as HDF5"):
        if isinstance(source, (str, os.PathLike)):
            access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
            access.set_sieve_buf_size(SIEVE_BYTES)
            access.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
            access.set_file_locking(False, True)
            h5 = h5py.File(h5py.h5f.open(os.fsencode(source), h5py.h5f.ACC_RDONLY, fapl=access))
        else:
            access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
            access.set_fileobj_driver(h5py.h5fd.fileobj_driver, source)
            access.set_sieve_buf_size(SIEVE_BYTES)
            access.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
            h5 = h5py.File(h5py.h5f.open(repr(source).encode(), h5py.h5f.ACC_RDONLY, fapl=access))
    try:
        with translating(label, "check that it stays inside itself"):
            check_confined(h5, label)
        with translating(label, "check its string storage"):
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as handle:
                    check_global_heaps(h5, handle, os.path.getsize(source), label)
            else:
                position = source.tell()
                size = source.seek(0, os.SEEK_END)
                check_global_heaps(h5, source, size, label)
                source.seek(position)
    except BaseException:
        with contextlib.suppress(Exception):
            h5.close()
        raise
    return h5


def _decode(value: Any, label: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise KerasFormatError(
                f"{label}: expected UTF-8 text; received undecodable bytes {bytes(value)[:40]!r}"
            ) from error
    if isinstance(value, (str, np.str_)):
        return str(value)
    raise KerasFormatError(f"{label}: expected a string; received {type(value).__name__} {short(value)}")


def read_names(obj: Any, name: str, label: str) -> list[str] | None:
    """A list-of-strings attribute (``layer_names``, ``weight_names``), or None if absent.

    Handles h5py's ``str`` and ``bytes`` forms, Keras 3's empty float arrays for empty lists,
    and HDF5's 64 KiB header limit: ``name0``, ``name1``... are concatenated when ``name``
    itself is absent.
    """
    attrs = obj.attrs
    if name in attrs:
        chunks = [attrs[name]]
    elif f"{name}0" in attrs:
        chunks = []
        while f"{name}{len(chunks)}" in attrs:
            chunks.append(attrs[f"{name}{len(chunks)}"])
    else:
        return None
    names: list[str] = []
    for chunk in chunks:
        array = np.asarray(chunk)
        if array.size == 0:
            continue
        if array.dtype.kind not in "SUO":
            raise KerasFormatError(
                f"{label}: attribute {name!r} must hold strings; received dtype {array.dtype}"
            )
        names.extend(_decode(item, f"{label} attribute {name!r}") for item in array.reshape(-1))
    return names


def read_json_attr(obj: Any, name: str, label: str) -> Any:
    """A JSON-valued string attribute (``model_config``), parsed; None when absent."""
    if name not in obj.attrs:
        return None
    text = _decode(obj.attrs[name], f"{label} attribute {name!r}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise KerasFormatError(
            f"{label}: attribute {name!r} must be valid JSON; received text that fails at "
            f"line {error.lineno} column {error.colno}: {error.msg}"
        ) from error


def dataset_problem(dataset: Any, file_size: int | None) -> str | None:
    """Why ``dataset`` (a snapshot dataset) cannot hold trustworthy weights, or None if it looks sound.

    Checks a floating dtype and a fixed shape, then the storage: contiguous bytes must lie
    inside the file; compressed chunks may expand at most :data:`MAX_EXPANSION` times, use
    only :data:`ALLOWED_FILTERS`, and every chunk must be present and inside the file.
    """
    if not isinstance(dataset, StoredDataset):
        return f"expected a dataset; found a {type(dataset).__name__}"
    if dataset.error:
        return f"its HDF5 description cannot be read ({dataset.error})"
    dtype = dataset.dtype
    integer_scalar = dtype.kind in "iu" and dtype.itemsize <= 8 and dataset.shape == ()  # Normalization's count
    if (dtype.kind != "f" or dtype.itemsize not in (2, 4, 8)) and not integer_scalar:
        return f"expected float16/32/64 values; found dtype {dtype}"
    shape = dataset.shape
    if shape is None or any(int(d) < 0 for d in shape):
        return f"expected a fixed shape; found {shape}"
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes == 0:
        return None
    stored = dataset.storage
    if file_size is not None and stored > file_size:
        return f"claims {stored:,} stored bytes but the whole file has {file_size:,}"
    unknown = [f for f in dataset.filters if f not in ALLOWED_FILTERS]
    if unknown:
        return (f"uses HDF5 filter(s) {unknown}; expected only {sorted(ALLOWED_FILTERS.values())} "
                f"(ids {sorted(ALLOWED_FILTERS)})")
    if dataset.layout == "contiguous":
        offset = dataset.offset
        if offset is None or stored < nbytes or (file_size is not None and offset + nbytes > file_size):
            return (f"shape {tuple(shape)} needs {nbytes:,} bytes but only {stored:,} are stored inside the "
                    "file (truncated file or absurd shape)")
        return None
    if dataset.layout == "compact":
        return None if stored >= nbytes else f"shape {tuple(shape)} needs {nbytes:,} bytes; {stored:,} are stored"
    if dataset.layout != "chunked":
        return f"expected contiguous or chunked storage; found {dataset.layout}"
    if nbytes > MAX_EXPANSION * stored + EXPANSION_SLACK:
        return (f"shape {tuple(shape)} needs {nbytes:,} bytes from {stored:,} stored bytes "
                f"(more than {MAX_EXPANSION}x expansion: a compression bomb or an absurd shape)")
    return _chunk_problem(dataset, file_size)


def _chunk_problem(dataset: StoredDataset, file_size: int | None) -> str | None:
    shape, chunk = dataset.shape or (), dataset.chunk_shape
    if len(chunk) != len(shape) or any(int(c) <= 0 for c in chunk):
        return f"chunk shape {chunk} does not fit shape {shape}"
    needed = math.prod(-(-d // int(c)) for d, c in zip(shape, chunk))
    found = set()
    for coords, address, size, _ in dataset.chunks:
        if len(coords) != len(shape) or any(int(x) % int(c) or not 0 <= int(x) < d for x, c, d in zip(coords, chunk, shape)):
            return f"a chunk at {coords} does not fit shape {shape} in chunks of {chunk}"
        if file_size is not None and not (0 <= int(address) and int(address) + int(size) <= file_size):
            return f"a chunk at {coords} lies outside the file"
        found.add(tuple(int(x) for x in coords))
    if len(found) != needed:
        return f"{needed:,} chunks are needed but {len(found):,} are stored (truncated or corrupt)"
    return None
