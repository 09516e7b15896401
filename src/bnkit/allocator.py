"""Use a faster memory allocator when one is installed.

On Linux, glibc's malloc returns every block over ~32 MB to the kernel, so each large
activation tensor page-faults anew: batch-norm training steps measured 2.4-4x faster with
tcmalloc preloaded.  ``bnkit train`` / ``bnkit demo`` re-run themselves once with
``LD_PRELOAD`` set to tcmalloc (Debian: ``apt install libtcmalloc-minimal4``) or jemalloc
(``libjemalloc2``) when found; ``--no-fast-allocator`` or ``BNKIT_NO_FAST_ALLOCATOR=1``
turns that off.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["find_fast_allocator", "loaded_allocator", "describe", "reexec_with_fast_allocator"]

_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_fast_allocator() -> str | None:
    """Path of an installed tcmalloc/jemalloc shared library, or None."""
    for name in _LIBRARIES:
        for folder in _DIRS:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


def loaded_allocator() -> str | None:
    """The tcmalloc/jemalloc library mapped into this process, if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        if "tcmalloc" in line or "jemalloc" in line:
            return line.split()[-1]
    return None


def describe() -> str:
    loaded = loaded_allocator()
    if loaded:
        return f"{Path(loaded).name} (preloaded)"
    hint = "" if find_fast_allocator() else " (install libtcmalloc-minimal4 for faster training)"
    return "glibc malloc" + hint


def reexec_with_fast_allocator() -> None:
    """Replace this process by itself with the allocator preloaded (once; Linux only)."""
    if os.environ.get("BNKIT_NO_FAST_ALLOCATOR") or os.environ.get("_BNKIT_REEXECUTED") or loaded_allocator():
        return
    library = find_fast_allocator()
    if library is None or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, _BNKIT_REEXECUTED="1")
    env["LD_PRELOAD"] = f"{library} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else library
    os.execve(sys.executable, [sys.executable, "-m", "bnkit", *sys.argv[1:]], env)
