"""Safe HDF5 access: lazy ``h5py``, attribute decoding, checked dataset reads.

Everything that opens or inspects HDF5 goes through here, so a damaged file surfaces as one
:class:`~bnkit.keras.KerasFormatError` naming the file and what was being read, never as an
``OSError`` or ``KeyError`` from deep inside h5py.  Datasets are checked before they are
read (floating dtype, storage consistent with the declared shape); :mod:`._copy` reads them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import IO, Any

import numpy as np

from ._heap import check_global_heaps
from .errors import KerasFormatError

__all__ = ["dataset_problem", "h5py_module", "open_h5", "read_json_attr", "read_names", "translating"]

#: HDF5's sieve buffer for reads: column slabs of a kernel read 4 MiB at a time.
SIEVE_BYTES = 4 * 1024 * 1024
#: A compressed dataset may expand at most this much over its stored bytes (zip-bomb guard).
MAX_EXPANSION = 1024
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


def open_h5(source: str | os.PathLike[str] | IO[bytes], label: object) -> Any:
    """Open an HDF5 file (a path or a binary file object) read-only."""
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
    raise KerasFormatError(f"{label}: expected a string; received {type(value).__name__} {value!r:.80}")


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
    """Why ``dataset`` cannot hold trustworthy weights, or None if it looks sound.

    Checks a floating dtype, a shape whose bytes the file can hold (uncompressed storage
    must be complete; compressed storage may expand at most :data:`MAX_EXPANSION` times).
    """
    h5py = h5py_module()
    if not isinstance(dataset, h5py.Dataset):
        return f"expected a dataset; found a {type(dataset).__name__}"
    dtype = dataset.dtype
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        return f"expected float16/32/64 values; found dtype {dtype}"
    shape = dataset.shape
    if shape is None or any(int(d) < 0 for d in shape):
        return f"expected a fixed shape; found {shape}"
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes == 0:
        return None
    stored = int(dataset.id.get_storage_size())
    if file_size is not None and stored > file_size:
        return f"claims {stored:,} stored bytes but the whole file has {file_size:,}"
    compressed = bool(dataset.compression) or bool(dataset.id.get_create_plist().get_nfilters())
    if not compressed and stored < nbytes:
        return (f"shape {tuple(shape)} needs {nbytes:,} bytes but only {stored:,} are stored "
                "(truncated file or absurd shape)")
    if compressed and nbytes > MAX_EXPANSION * max(stored, 1) + (1 << 20):
        return (f"shape {tuple(shape)} needs {nbytes:,} bytes from {stored:,} compressed bytes "
                f"(more than {MAX_EXPANSION}x expansion)")
    return None
