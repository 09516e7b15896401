"""Writing files so that nothing half-written is ever seen or left behind."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["STAGING_PREFIX", "remove_stale_staging", "write_atomically"]

#: Staging folders are ``.bnkit-<pid>-<random>``: the pid tells a later process whether the
#: writer is gone (killed before it could clean up) and its folder can be removed.
STAGING_PREFIX = ".bnkit-"
_STARTED = time.time()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staged)`` on a file in a private folder beside ``path``, then rename it to ``path``.

    Readers see the old file or the complete new one, never a partial one; if ``write``
    raises, the staged file is removed and ``path`` is untouched.  A process killed while
    writing leaves its staging folder behind; :func:`remove_stale_staging` removes it later.
    """
    directory = path.parent if str(path.parent) else Path(".")
    with tempfile.TemporaryDirectory(dir=directory, prefix=f"{STAGING_PREFIX}{os.getpid()}-") as tmp:
        staged = Path(tmp) / path.name
        write(staged)
        os.replace(staged, path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or no way to tell: keep its folder
        return True
    return True


def _stale(entry: Path) -> bool:
    """Whether ``entry`` is a staging folder left by a process that is gone."""
    rest = entry.name[len(STAGING_PREFIX):]
    owner, _, _ = rest.partition("-")
    if owner.isdigit():
        return not _alive(int(owner))
    # an older bnkit's folder (no pid in its name): stale if it predates this process
    try:
        return entry.stat().st_mtime < _STARTED - 60
    except OSError:
        return False


def remove_stale_staging(directory: Path) -> list[Path]:
    """Remove the staging folders in ``directory`` whose writer has exited; returns what was removed.

    Never raises: a folder that cannot be listed or removed is left as it is.
    """
    removed: list[Path] = []
    try:
        entries = [e for e in Path(directory).iterdir() if e.name.startswith(STAGING_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink() and _stale(entry):
                shutil.rmtree(entry)
                removed.append(entry)
        except OSError:
            continue
    return removed
