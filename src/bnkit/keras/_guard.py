"""Refuse HDF5 files whose objects would make the library read bytes outside the file.

HDF5 can resolve names and data far beyond the file being opened:

* *external links* (``h5py.ExternalLink``) open another file and an object in it;
* *external raw storage* (``create_dataset(..., external=[(name, offset, size)])``) keeps a
  dataset's values in other files, read on every ``dataset[...]``;
* *virtual datasets* map regions of datasets in other files (or, with ``"."``, of this one);
* *soft links* are paths inside the file, but they can lead through an external link, loop,
  or point at nothing.

Keras writes none of these.  :func:`check_confined` lists every link of the file with the
low-level API (links are listed, never followed; objects are opened only through hard
links, each group once) and raises :class:`~bnkit.keras.KerasFormatError` naming the first
offending link or dataset and its kind.  It runs right after the file is opened, before any
attribute or dataset value is read, so nothing later can reach a target outside the file.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from .errors import KerasFormatError

__all__ = ["MAX_LINKS", "MAX_SOFT_HOPS", "check_confined"]

#: Files with more links than this are refused (Keras files have a few per weight).
MAX_LINKS = 1_000_000
#: A soft link may lead through at most this many soft links before it counts as a loop.
MAX_SOFT_HOPS = 32


def check_confined(h5: Any, label: object) -> None:
    """Raise unless every link and dataset of the open file ``h5`` stays inside it."""
    import h5py

    links = _Links(h5py, h5, label)
    for group, table in links.tables.items():
        for name, (kind, value) in table.items():
            path = links.path(group, name)
            if kind == "external":
                raise _refuse(label, path, "an external link", f"to {value[1]!r} in the file {value[0]!r}")
            if kind == "soft":
                problem = links.resolve(group, value)
                if problem:
                    raise _refuse(label, path, "a soft link", f"to {value!r} that {problem}")
    for path, dataset in links.datasets:
        try:
            _check_dataset(h5py, dataset, path, label)
        finally:
            dataset.close()


def _refuse(label: object, path: str, kind: str, detail: str) -> KerasFormatError:
    return KerasFormatError(
        f"{label}: {path} is {kind} {detail}; expected every object inside the file (Keras never "
        "writes links or storage that point elsewhere); the file is refused and nothing was read through it"
    )


def _check_dataset(h5py: Any, dataset: Any, path: str, label: object) -> None:
    plist = dataset.get_create_plist()
    count = plist.get_external_count()
    if count:
        names = [plist.get_external(i)[0].decode("utf-8", "replace") for i in range(min(count, 3))]
        raise _refuse(label, f"dataset {path}", "stored in external raw files", str(names))
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        sources = [plist.get_virtual_filename(i) for i in range(min(plist.get_virtual_count(), 3))]
        where = "reaching other files" if any(s != "." for s in sources) else "mapping other datasets"
        raise _refuse(label, f"dataset {path}", f"a virtual dataset {where}", f"(sources in {sources})")


class _Links:
    """Every link of a file, per group (by object address), found breadth-first over hard links."""

    def __init__(self, h5py: Any, h5: Any, label: object) -> None:
        kinds = {h5py.h5l.TYPE_HARD: "hard", h5py.h5l.TYPE_SOFT: "soft", h5py.h5l.TYPE_EXTERNAL: "external"}
        self.root = h5py.h5o.get_info(h5.id).addr
        self.tables: dict[int, dict[str, tuple[str, Any]]] = {}
        self.parents: dict[int, tuple[int, str]] = {}  # group -> (parent group, link name), first found
        self.children: dict[tuple[int, str], int] = {}  # (group, name) -> group it hard-links to
        self.datasets: list[tuple[str, Any]] = []
        total = 0
        queue: deque[tuple[int, Any]] = deque([(self.root, h5.id)])
        while queue:
            address, group = queue.popleft()
            if address in self.tables:
                continue
            entries: list[tuple[bytes, int]] = []  # h5py reuses one LinkInfo: keep its type now
            group.links.iterate(lambda name, info: entries.append((name, info.type)), info=True)
            table: dict[str, tuple[str, Any]] = {}
            self.tables[address] = table
            for raw, link_type in entries:
                total += 1
                if total > MAX_LINKS:
                    raise KerasFormatError(f"{label}: more than {MAX_LINKS:,} links; expected a Keras file")
                name = raw.decode("utf-8", "replace")
                if not name or "/" in name or name in (".", ".."):
                    raise KerasFormatError(f"{label}: a link named {name[:80]!r}; expected plain link names")
                kind = kinds.get(link_type)
                if kind is None:
                    raise _refuse(label, self.path(address, name), "a user-defined link", f"(link type {link_type})")
                value: Any = None
                if kind == "soft":
                    value = group.links.get_val(raw).decode("utf-8", "replace")
                elif kind == "external":
                    value = tuple(part.decode("utf-8", "replace") for part in group.links.get_val(raw))
                table[name] = (kind, value)
                if kind == "hard":
                    child = h5py.h5o.open(group, raw)
                    kind_of_child = h5py.h5i.get_type(child)
                    if kind_of_child == h5py.h5i.GROUP:
                        child_address = h5py.h5o.get_info(child).addr
                        self.children[(address, name)] = child_address
                        if child_address not in self.tables and child_address not in self.parents:
                            self.parents[child_address] = (address, name)
                        queue.append((child_address, child))
                    elif kind_of_child == h5py.h5i.DATASET:
                        self.datasets.append((self.path(address, name), child))
                    else:
                        child.close()

    def path(self, group: int, name: str) -> str:
        """A path from the root to link ``name`` of ``group`` (through first-found hard links)."""
        parts, seen = [name], set()
        while group != self.root and group in self.parents and group not in seen:
            seen.add(group)
            group, step = self.parents[group]
            parts.append(step)
        return "/" + "/".join(reversed(parts))

    def resolve(self, group: int, target: str) -> str | None:
        """None when ``target`` (a soft link's value, in ``group``) names an object of this file; else why not."""
        hops = 0
        current = self.root if target.startswith("/") else group
        pending = [part for part in target.split("/") if part not in ("", ".")]
        while pending:
            part = pending.pop(0)
            if part == "..":
                return "leaves the file's groups"
            entry = self.tables.get(current, {}).get(part)
            if entry is None:
                return "points at nothing (a dangling link)"
            kind, value = entry
            if kind == "external":
                return f"leads through the external link {part!r} into the file {value[0]!r}"
            if kind == "soft":
                hops += 1
                if hops > MAX_SOFT_HOPS:
                    return f"goes through more than {MAX_SOFT_HOPS} soft links (a loop)"
                if value.startswith("/"):
                    current = self.root
                pending = [p for p in value.split("/") if p not in ("", ".")] + pending
                continue
            if pending:
                child = self.children.get((current, part))
                if child is None:
                    return f"passes through {part!r}, which is not a group"
                current = child
        return None
