"""Let the HDF5 library parse an untrusted file in a separate process only.

A few corrupted bytes in an object header or an attribute can make libhdf5 crash
(SIGSEGV), hang, or allocate without bound while it parses metadata, and whether it does
can depend on what was read before; no check written in Python rules that out.  So bnkit
never hands an untrusted file to libhdf5 in the caller's process.  A worker process
(``python -c``, importing only h5py and NumPy, under an address-space limit) opens it,
refuses unsafe links and storage (:mod:`._guard`) and corrupt string heaps (:mod:`._heap`),
and sends back a JSON snapshot (:mod:`._snapshot`): the groups with their attributes, and
each dataset's type, shape, byte offset or chunk index and filters.  The caller reads
dataset values itself from checked byte ranges.

If the worker dies, hangs past :func:`probe_seconds` or runs out of memory, the load raises
:class:`~bnkit.keras.KerasFormatError` saying that the HDF5 library crashed on the file.
One worker serves a process (started on first use, about 0.15 s; restarted after a crash);
snapshots of the last few files are cached per file version, as compressed JSON (about 15 KB
for a 0.25 MB snapshot): every call gets a snapshot of its own, which a load frees once it
has indexed the weights.  With the environment variable
``BNKIT_H5_IN_PROCESS=1`` the snapshot is made in the calling process instead (for
platforms that cannot start a child process; a corrupt file may then crash it).
"""
from __future__ import annotations

import atexit
import base64
import json
import os
import selectors
import subprocess
import sys
import threading
import types
import time
import zlib
from pathlib import Path
from typing import Any

from .errors import KerasFormatError

__all__ = ["MEMORY_LIMIT", "probe", "probe_seconds", "serve"]

#: The worker's address-space limit (RLIMIT_AS): parsing a sane file needs far less.
MEMORY_LIMIT = 4 << 30
#: Chunked datasets are decoded in the worker up to this many bytes in all.
DECODE_LIMIT = 4 << 30
_CACHE_SIZE = 8
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../bnkit
_BOOT = """\
import os, sys, types
sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
root = sys.argv[1]
for name, sub in (("bnkit", ""), ("bnkit.keras", "keras")):
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(root, sub)] if sub else [root]
    sys.modules[name] = module
from bnkit.keras._probe import serve
serve()
"""


def probe_seconds(size: int) -> float:
    """How long the worker may take on a file of ``size`` bytes before it counts as hung."""
    return 30.0 + size / 50e6


def probe(path: str | os.PathLike[str], label: object, offset: int = 0, size: int | None = None) -> dict[str, Any]:
    """The snapshot of the HDF5 file at ``path`` (``size`` bytes at ``offset``), made by the worker.

    Raises KerasFormatError when the file is refused (unsafe links or storage, corrupt
    string heaps, not HDF5) or when libhdf5 crashes, hangs or runs out of memory on it.
    """
    stat = os.stat(path)
    size = stat.st_size - offset if size is None else size
    request = {"path": os.fspath(path), "offset": offset, "size": size, "label": str(label)}
    if os.environ.get("BNKIT_H5_IN_PROCESS") == "1":
        reply = _examine(request)
    else:
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, offset, size, str(label))
        with _LOCK:
            packed = _REPLIES.get(key)
            if packed is None:
                line, reply = _ask(request, probe_seconds(size))
                packed = zlib.compress(line, 1)
            else:
                reply = json.loads(zlib.decompress(packed))  # stored only once parsed into a dict
            _REPLIES[key] = packed
            while len(_REPLIES) > _CACHE_SIZE:
                _REPLIES.pop(next(iter(_REPLIES)))
    if not isinstance(reply.get("tree"), dict):
        raise KerasFormatError(str(reply.get("refused") or f"{label}: the HDF5 reader returned no description"))
    return reply["tree"]


_LOCK = threading.Lock()
#: The worker's reply lines, zlib-compressed (a .h5 file's 0.2-0.3 MB of JSON takes ~15 KB):
#: each call parses its own copy, which its caller may free once it has read what it needs.
_REPLIES: dict[tuple[Any, ...], bytes] = {}
_WORKER: list[Any] = []  # [(owner pid, Popen, unread reply bytes)] once started


def _ask(request: dict[str, Any], seconds: float) -> tuple[bytes | bytearray, dict[str, Any]]:
    """The worker's reply to ``request``: its JSON line and the dict it parses to (a refusal
    naming the failure when the worker crashes, hangs or answers something else)."""
    process = _worker()
    label = request["label"]
    try:
        assert process.stdin is not None
        process.stdin.write((json.dumps(request) + "\n").encode())
        process.stdin.flush()
        line = _read_line(process, seconds)
    except (OSError, ValueError):
        line = None
    if line is not None:
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            return line, reply
    hung = line is None and process.poll() is None
    _stop_worker()
    if hung:
        what = f"did not finish within {seconds:.0f} s (the HDF5 library hangs on it)"
    elif process.returncode is not None and process.returncode < 0:
        what = f"crashed the HDF5 library (signal {-process.returncode})"
    else:
        what = "crashed the HDF5 library or exhausted its memory"
    refusal = {"refused": f"{label}: reading its HDF5 structure {what}; the file is corrupt (it was parsed in a "
                          "separate process, so this process is unharmed)"}
    return json.dumps(refusal).encode(), refusal


def _read_line(process: Any, seconds: float) -> bytearray | None:
    """The worker's next reply line, or None when it dies or ``seconds`` pass.

    The line is returned in the buffer it was read into (no copy of a snapshot's few
    hundred KB); bytes after it, if any, stay for the next call.
    """
    deadline = time.monotonic() + seconds
    buffer = _WORKER[0][2]
    end = buffer.find(b"\n")
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while end < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                process.wait()
                return None
            found = chunk.find(b"\n")
            end = len(buffer) + found if found >= 0 else -1
            buffer.extend(chunk)
    _WORKER[0] = (*_WORKER[0][:2], bytearray(memoryview(buffer)[end + 1:]))
    del buffer[end:]
    return buffer


def _worker() -> Any:
    if _WORKER and _WORKER[0][0] == os.getpid() and _WORKER[0][1].poll() is None:
        return _WORKER[0][1]
    _WORKER.clear()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(_PACKAGE_ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, close_fds=True)
    except OSError as error:
        raise RuntimeError(
            f"bnkit parses HDF5 files in a child process first and could not start one ({sys.executable}: "
            f"{error}); set BNKIT_H5_IN_PROCESS=1 to parse them in this process instead") from error
    _WORKER.append((os.getpid(), process, bytearray()))
    return process


def _stop_worker() -> None:
    if _WORKER and _WORKER[0][0] == os.getpid():
        process = _WORKER[0][1]
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
    _WORKER.clear()


atexit.register(_stop_worker)


# ---- the worker side ----------------------------------------------------------------------
def serve() -> None:
    """The worker's loop: one JSON request per line on stdin, one JSON reply per line."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platforms without rlimits
        pass
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # libhdf5 writes nothing into the replies
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _examine(request)
        except Exception as error:  # noqa: BLE001 - any failure is a refusal of this file
            reply = {"refused": f"{request.get('label')}: could not read its HDF5 structure: "
                                f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _examine(request: dict[str, Any]) -> dict[str, Any]:
    """Open the file as bnkit would and describe it (see :mod:`._snapshot`), or say why not."""
    from ._archive import FileWindow
    from ._h5 import open_checked, translating

    label = request["label"]
    try:
        source: Any = request["path"]
        if request.get("offset"):
            source = FileWindow(Path(request["path"]), int(request["offset"]), int(request["size"]))
        h5 = open_checked(source, label)
        try:
            with translating(label, "read its HDF5 structure"):
                import h5py

                return {"tree": _Describer(label).group(h5py.h5o.open(h5.id, b"/"), "/", 0)}
        finally:
            h5.close()
    except KerasFormatError as error:
        return {"refused": str(error)}


class _Describer:
    """Every group reached by hard links, with attributes; every dataset's type and storage."""

    MAX_DEPTH = 64
    MAX_CHUNKS = 1_000_000

    def __init__(self, label: str) -> None:
        import h5py
        import numpy as np

        self.h5py, self.np, self.label = h5py, np, label
        self.seen: set[int] = set()

    def group(self, gid: Any, path: str, depth: int) -> dict[str, Any]:
        h5py = self.h5py
        address = h5py.h5o.get_info(gid).addr
        if depth > self.MAX_DEPTH or address in self.seen:
            raise KerasFormatError(
                f"{self.label}: group {path} is nested more than {self.MAX_DEPTH} deep or reached twice; "
                "expected a tree of groups (Keras writes one)")
        self.seen.add(address)
        node: dict[str, Any] = {"attrs": self.attributes(gid), "members": {}}
        names: list[bytes] = []
        gid.links.iterate(names.append)
        for raw in names:
            if gid.links.get_info(raw).type != h5py.h5l.TYPE_HARD:
                continue  # soft links were checked to stay inside the file; Keras writes none
            name = raw.decode("utf-8", "replace")
            child = h5py.h5o.open(gid, raw)
            kind = h5py.h5i.get_type(child)
            if kind == h5py.h5i.GROUP:
                node["members"][name] = self.group(child, f"{path.rstrip('/')}/{name}", depth + 1)
            elif kind == h5py.h5i.DATASET:
                node["members"][name] = self.dataset(child)
        return node

    def attributes(self, oid: Any) -> dict[str, Any]:
        manager = self.h5py.AttributeManager(types.SimpleNamespace(id=oid))
        found: dict[str, Any] = {}
        for name in list(manager):
            try:
                found[name] = self.encode(manager[name])
            except Exception as error:  # noqa: BLE001 - reported when the attribute is used
                found[name] = {"t": "x", "v": f"could not read attribute {name!r}: {type(error).__name__}: {error}"}
        return found

    def encode(self, value: Any) -> dict[str, Any]:
        np = self.np
        if isinstance(value, str):
            return {"t": "s", "v": str(value)}
        if isinstance(value, (bytes, np.bytes_)):
            return {"t": "b", "v": bytes(value).hex()}
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.kind in "OSU":
                return {"t": "a", "shape": list(array.shape), "v": [self.encode(x) for x in array.reshape(-1)]}
            if array.dtype.kind in "fiub" and array.size <= 1 << 20:
                return {"t": "n", "dtype": array.dtype.str, "shape": list(array.shape), "v": array.reshape(-1).tolist()}
        return {"t": "x", "v": f"an attribute of type {type(value).__name__} (not a string or number)"}

    def dataset(self, did: Any) -> dict[str, Any]:
        h5py, np = self.h5py, self.np
        node: dict[str, Any] = {"kind": "dataset"}
        try:
            dtype = did.dtype
            node["dtype"] = dtype.str if dtype.kind in "fiub" else "|O"
            space = did.get_space()
            node["shape"] = list(space.shape) if space.get_simple_extent_type() == h5py.h5s.SIMPLE else (
                [] if space.get_simple_extent_type() == h5py.h5s.SCALAR else None)
            plist = did.get_create_plist()
            layout = plist.get_layout()
            node["filters"] = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            node["storage"] = int(did.get_storage_size())
            if layout == h5py.h5d.CONTIGUOUS:
                node["layout"], node["offset"] = "contiguous", did.get_offset()
            elif layout == h5py.h5d.CHUNKED:
                node["layout"], node["chunk_shape"] = "chunked", list(plist.get_chunk())
                count = did.get_num_chunks()
                if count > self.MAX_CHUNKS:
                    raise ValueError(f"{count:,} chunks; expected at most {self.MAX_CHUNKS:,}")
                node["chunks"] = [[list(info.chunk_offset), int(info.byte_offset), int(info.size), int(info.filter_mask)]
                                  for info in (did.get_chunk_info(i) for i in range(count))]
            elif layout == h5py.h5d.COMPACT:
                node["layout"] = "compact"
                if dtype.kind in "fiub" and node["shape"] is not None and np.prod(node["shape"]) * dtype.itemsize <= 1 << 16:
                    values = np.empty(node["shape"], dtype=dtype)
                    did.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
                    node["data"] = base64.b64encode(values.tobytes()).decode()
            else:
                node["layout"] = f"layout {layout}"
        except Exception as error:  # noqa: BLE001 - reported when the dataset is checked
            node["error"] = f"{type(error).__name__}: {error}"
        return node
