"""The ``.keras`` v3 archive: a ZIP of ``metadata.json``, ``config.json``, ``model.weights.h5``.

Reading validates every member name first (no absolute paths, no ``..``), caps the size of
the JSON members, and hands the weights member to h5py as a file object (stored members)
or through a size-capped temporary file (compressed members).  Writing builds the archive
next to the target and renames it into place, so an interrupted write leaves nothing half
written.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from .._files import write_atomically
from ._h5 import h5py_module, open_h5
from .errors import KerasFormatError

__all__ = ["CONFIG", "WEIGHTS", "is_keras_archive", "read_archive_json", "open_archive_weights", "write_archive"]

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = 64 * 1024 * 1024
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError)  # RuntimeError: a member flagged as encrypted


def is_keras_archive(path: Path) -> bool:
    """True when ``path`` starts like a ZIP file (a ``.keras`` archive, whatever its suffix)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


@contextlib.contextmanager
def _zip(path: Path) -> Iterator[zipfile.ZipFile]:
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as error:
        raise KerasFormatError(
            f"{path}: expected a .keras archive (a ZIP file); it cannot be opened as one: {error}"
        ) from error
    with archive:
        _check_members(path, archive)
        yield archive


def _check_members(path: Path, archive: zipfile.ZipFile) -> None:
    seen: set[str] = set()
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise KerasFormatError(
                f"{path}: unsafe archive member {name!r}: expected relative paths without '..'; "
                "the archive is refused"
            )
        if name in seen:
            raise KerasFormatError(f"{path}: archive member {name!r} appears twice; expected unique names")
        seen.add(name)
    if "model.weights.json" in seen:
        raise KerasFormatError(
            f"{path}: sharded weights (model.weights.json) are not supported; expected a single "
            f"{WEIGHTS}; re-save the model without `max_shard_size`"
        )


def _member(path: Path, archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(name)
    except KeyError:
        found = sorted(archive.namelist())[:10]
        raise KerasFormatError(
            f"{path}: the .keras archive has no {name!r}; expected {CONFIG} and {WEIGHTS}; found {found}"
        ) from None


def read_archive_json(path: Path, name: str = CONFIG, *, required: bool = True) -> Any:
    """Parse one JSON member (``config.json`` or ``metadata.json``)."""
    with _zip(path) as archive:
        if not required and name not in archive.namelist():
            return None
        info = _member(path, archive, name)
        if info.file_size > MAX_JSON_BYTES:
            raise KerasFormatError(
                f"{path}: {name} declares {info.file_size:,} bytes; expected at most {MAX_JSON_BYTES:,}"
            )
        try:
            with archive.open(info) as handle:
                raw = handle.read(MAX_JSON_BYTES + 1)
            return json.loads(raw.decode("utf-8"))
        except KerasFormatError:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise KerasFormatError(f"{path}: {name} must be UTF-8 JSON; it is not: {error}") from error
        except _ZIP_ERRORS as error:
            raise KerasFormatError(f"{path}: could not read {name} from the archive: {error}") from error


@contextlib.contextmanager
def open_archive_weights(path: Path) -> Iterator[tuple[Any, int]]:
    """Yield ``(h5py.File, size)`` for the archive's ``model.weights.h5``."""
    with _zip(path) as archive:
        info = _member(path, archive, WEIGHTS)
        label = f"{path}::{WEIGHTS}"
        handle: IO[bytes]
        try:
            if info.compress_type == zipfile.ZIP_STORED:
                handle = cast(IO[bytes], _StoredMember(path, info))
            else:
                spill = tempfile.TemporaryFile()
                with archive.open(info) as source:
                    copied = _copy_capped(source, spill, info.file_size)
                if copied != info.file_size:
                    raise KerasFormatError(
                        f"{label}: expected {info.file_size:,} bytes; the member decompresses to {copied:,}"
                    )
                spill.seek(0)
                handle = spill
        except KerasFormatError:
            raise
        except _ZIP_ERRORS as error:
            raise KerasFormatError(f"{label}: could not read the member: {error}") from error
        with handle:
            h5 = open_h5(handle, label)
            try:
                yield h5, info.file_size
            finally:
                with contextlib.suppress(Exception):
                    h5.close()


class _StoredMember(io.RawIOBase):
    """A read-only, seekable window onto a stored (uncompressed) member's bytes.

    ``ZipFile.open`` rewinds to the member's start on every backward seek, which makes
    HDF5's random access quadratic; this reads the archive file directly instead (the ZIP
    CRC is therefore not checked: HDF5 and bnkit's own checks catch damaged bytes).
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._file.seek(info.header_offset)
            header = self._file.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise KerasFormatError(f"{path}: the local header of {info.filename!r} is damaged")
            name_length, extra_length = struct.unpack_from("<HH", header, 26)
            self._start = info.header_offset + 30 + name_length + extra_length
            self._size = info.file_size
            if self._start + self._size > os.fstat(self._file.fileno()).st_size:
                raise KerasFormatError(
                    f"{path}: member {info.filename!r} claims {self._size:,} bytes past the end of the archive"
                )
        except BaseException:
            self._file.close()
            raise
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = min(max(base + offset, 0), self._size)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._size - self._position)
        if count <= 0:
            return 0
        read = os.preadv(self._file.fileno(), [view[:count]], self._start + self._position)
        self._position += read
        return read

    def close(self) -> None:
        self._file.close()
        super().close()


def _copy_capped(source: Any, target: Any, limit: int) -> int:
    copied = 0
    while True:
        chunk = source.read(1 << 20)
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            return copied
        target.write(chunk)


def write_archive(path: Path, config: dict[str, Any], keras_version: str,
                  write_weights: Callable[[Any], None]) -> None:
    """Write a ``.keras`` archive; ``write_weights(h5file)`` fills ``model.weights.h5``."""
    h5py = h5py_module()
    metadata = {"keras_version": keras_version,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}

    def write(staged: Path) -> None:
        weights = staged.with_name(WEIGHTS)  # beside the archive, in the same private folder
        with h5py.File(weights, "w") as h5:
            write_weights(h5)
        with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(METADATA, json.dumps(metadata))
            archive.writestr(CONFIG, json.dumps(config))
            archive.write(weights, WEIGHTS)

    write_atomically(path, write)
