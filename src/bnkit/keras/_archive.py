"""The ``.keras`` v3 archive: a ZIP of ``metadata.json``, ``config.json``, ``model.weights.h5``.

Reading validates every member name first (no absolute paths, no ``..``), caps the size of
the JSON members, and opens the weights member in place (stored members: a
:class:`FileWindow` on the archive) or from a private temporary file it is streamed into
under the budget :func:`weights_budget` derives from the config (compressed members: a
compression bomb stops there).  Writing builds the archive
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
from typing import Any

from .._files import write_atomically
from ._h5 import h5py_module, open_h5
from .errors import KerasFormatError

__all__ = ["CONFIG", "WEIGHTS", "FileWindow", "is_keras_archive", "open_archive_weights", "read_archive_json",
           "weights_budget", "write_archive"]

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = 64 * 1024 * 1024
#: A compressed weights member may expand this much when its config cannot be planned.
MAX_RATIO = 200
#: Allowed HDF5 bytes per layer and per weight (object headers, names, attributes) ...
OVERHEAD_BYTES = 16 * 1024
#: ... and in all (superblock, root attributes, free space).
SLACK_BYTES = 1 << 20
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


def weights_budget(path: Path) -> tuple[int, str]:
    """At most how many bytes ``model.weights.h5`` may decompress to, and why.

    The archive's config declares every weight: 8 bytes per value (float64 at most) plus
    HDF5 overhead per layer and per weight, plus :data:`SLACK_BYTES`.  A config bnkit cannot
    plan (an unsupported layer) falls back to :data:`MAX_RATIO` times the compressed size.
    """
    from ._plan import plan_model
    from ._graph import parse_model_config

    try:
        config = read_archive_json(path)
        plan = plan_model(parse_model_config(config, path), config, init=False, source=path)
    except KerasFormatError:
        return -1, ""
    weights = sum(len(layer) for layer in plan.weight_shapes.values())
    budget = 8 * plan.elements() + OVERHEAD_BYTES * (len(plan.weight_shapes) + weights) + SLACK_BYTES
    return budget, f"its config declares {plan.elements():,} weight values"


@contextlib.contextmanager
def open_archive_weights(path: Path) -> Iterator[tuple[Any, int]]:
    """Yield ``(h5py.File, size)`` for the archive's ``model.weights.h5``.

    A stored member is read in place; a compressed one is streamed, 1 MiB at a time, into a
    private temporary file, with its size capped by :func:`weights_budget` (the ZIP header's
    declared size is checked first, then a running count while writing), so a compression
    bomb is refused after at most the budget has been written.
    """
    with _zip(path) as archive:
        info = _member(path, archive, WEIGHTS)
        label = f"{path}::{WEIGHTS}"
        if info.compress_type == zipfile.ZIP_STORED:
            with _translating_zip(label):
                member = _StoredMember(path, info)
            with member, _closing(open_h5(member, label)) as h5:
                yield h5, info.file_size
            return
        budget, reason = weights_budget(path)
        if budget < 0:
            budget = MAX_RATIO * max(info.compress_size, 1) + SLACK_BYTES
            reason = f"at most {MAX_RATIO}x its {info.compress_size:,} compressed bytes"
        if info.file_size > budget:
            raise _bomb(label, f"its ZIP header declares {info.file_size:,} bytes", budget, reason)
        with tempfile.TemporaryDirectory(prefix="bnkit-keras-") as tmp:
            spill = Path(tmp) / WEIGHTS
            with _translating_zip(label), archive.open(info) as source, open(spill, "wb") as target:
                copied = _copy_capped(source, target, min(info.file_size, budget))
            if copied > budget:
                raise _bomb(label, "it decompresses past the budget", budget, reason)
            if copied != info.file_size:
                raise KerasFormatError(
                    f"{label}: expected {info.file_size:,} bytes; the member decompresses to {copied:,}"
                    + (" or more" if copied > info.file_size else "")
                )
            with _closing(open_h5(spill, label)) as h5:
                yield h5, copied


@contextlib.contextmanager
def _closing(h5: Any) -> Iterator[Any]:
    try:
        yield h5
    finally:
        with contextlib.suppress(Exception):
            h5.close()


def _bomb(label: str, what: str, budget: int, reason: str) -> KerasFormatError:
    return KerasFormatError(
        f"{label}: {what}; expected at most {budget:,} bytes because {reason} (a compression bomb or a "
        "corrupted archive); nothing more was decompressed"
    )


@contextlib.contextmanager
def _translating_zip(label: str) -> Iterator[None]:
    try:
        yield
    except KerasFormatError:
        raise
    except _ZIP_ERRORS as error:
        raise KerasFormatError(f"{label}: could not read the member: {error}") from error


class FileWindow(io.RawIOBase):
    """A read-only, seekable window of ``size`` bytes at ``start`` of the file ``path``.

    ``window`` names those bytes, so :func:`~bnkit.keras._h5.open_h5` can have the worker
    process parse the same bytes first.
    """

    def __init__(self, path: Path, start: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        if start < 0 or size < 0 or start + size > os.fstat(self._file.fileno()).st_size:
            self._file.close()
            raise KerasFormatError(f"{path}: {size:,} bytes at {start:,} lie past the end of the file")
        self.window = (path, start, size)
        self._start, self._size, self._position = start, size, 0

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


def _StoredMember(path: Path, info: zipfile.ZipInfo) -> FileWindow:
    """The bytes of a stored (uncompressed) member, read in place.

    ``ZipFile.open`` rewinds to the member's start on every backward seek, which makes
    HDF5's random access quadratic; this reads the archive file directly instead (the ZIP
    CRC is therefore not checked: HDF5 and bnkit's own checks catch damaged bytes).
    """
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise KerasFormatError(f"{path}: the local header of {info.filename!r} is damaged")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > os.path.getsize(path):
        raise KerasFormatError(
            f"{path}: member {info.filename!r} claims {info.file_size:,} bytes past the end of the archive"
        )
    return FileWindow(path, start, info.file_size)


def _copy_capped(source: Any, target: Any, limit: int) -> int:
    """Copy 1 MiB reads until ``source`` ends or more than ``limit`` bytes came (then stop)."""
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
