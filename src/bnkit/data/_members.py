"""Opening an ``.npz`` and reading its ``.npy`` members safely, with errors naming the file.

:func:`open_npz` loads without pickles and refuses an unreadable file or a lone ``.npy``;
:func:`read_member` reads one array after :func:`check_member_size`.  Each caller (the data
module, the CLI's ``--calibration``) passes its own label and expected contents, so the
messages say what that caller wanted.

Sizes declared by ``.npy`` members are checked before numpy allocates them.
``numpy.load`` trusts the header of each member: a few hundred bytes declaring a
``(2**40, 8)`` float64 array make it allocate 64 TiB (a ``MemoryError`` at best).  The header
is read here first, and the declared size (shape x itemsize) is compared with the bytes the
member actually holds and with the machine's memory.
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_member_size", "memory_bytes", "open_npz", "read_member"]

_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return None


def _header(stream: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # (3, 0) and later: numpy's reader knows them
        shape, _, dtype = np.lib.format._read_array_header(stream, version)  # noqa: SLF001
    return tuple(int(s) for s in shape), dtype


def check_member_size(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> None:
    """Raise ``ValueError`` when member ``key`` declares more data than it holds or than memory allows.

    Members that are not ``.npy`` files, or whose header numpy itself cannot read, are left
    to ``numpy.load`` (which then raises its own, caught, error).
    """
    zip_file = getattr(archive, "zip", None)
    if not isinstance(zip_file, zipfile.ZipFile):
        return
    names = set(zip_file.namelist())
    name = next((n for n in (key + ".npy", key) if n in names), None)
    if name is None:
        return
    info = zip_file.getinfo(name)
    try:
        with zip_file.open(info) as stream:
            shape, dtype = _header(stream)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size:
        raise ValueError(f"{path}: array '{key}' declares shape {shape} of {dtype} ({declared:,} bytes) but its member "
                         f"holds {info.file_size:,} bytes: a truncated or forged archive")
    memory = memory_bytes()
    if memory is not None and declared > memory // 2:
        raise ValueError(f"{path}: array '{key}' of shape {shape} and dtype {dtype} needs {declared:,} bytes, more than "
                         f"half of this machine's {memory:,} bytes of memory")


def open_npz(path: str | Path, label: str, unreadable: str, single: str, *,
             missing: bool = False) -> np.lib.npyio.NpzFile:
    """``np.load(path, allow_pickle=False)``, refused unless it is an ``.npz`` archive.

    Errors read ``"{label}: expected {unreadable}; found an unreadable file (...)"`` and
    ``"{label}: expected {single}; found a single .npy array of shape ..."``.  With
    ``missing``, an absent file is a ``FileNotFoundError`` ``"{label}: no such file"``
    rather than an unreadable one.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as error:
        if missing and isinstance(error, FileNotFoundError):
            raise FileNotFoundError(f"{label}: no such file") from None
        raise ValueError(f"{label}: expected {unreadable}; found an unreadable file "
                         f"({type(error).__name__}: {error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{label}: expected {single}; found a single .npy array "
                         f"of shape {getattr(archive, 'shape', '?')}")
    return archive


def read_member(path: Path, archive: np.lib.npyio.NpzFile, key: str, label: str, expected: str) -> np.ndarray:
    """Array ``key`` of ``archive``, its size checked first (:func:`check_member_size`).

    A member numpy cannot read (an object array, a damaged member) is a ``ValueError``
    ``"{label}: expected {expected}; found <error type>: <message>"``.
    """
    check_member_size(path, archive, key)
    try:
        return archive[key]
    except _READ_ERRORS as error:
        raise ValueError(f"{label}: expected {expected}; found {type(error).__name__}: {error}") from None
