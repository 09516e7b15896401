"""Writing files so that nothing half-written is ever seen or left behind."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staged)`` on a file in a private folder beside ``path``, then rename it to ``path``.

    Readers see the old file or the complete new one, never a partial one; if ``write``
    raises, the staged file is removed and ``path`` is untouched.
    """
    directory = path.parent if str(path.parent) else Path(".")
    with tempfile.TemporaryDirectory(dir=directory, prefix=".bnkit-") as tmp:
        staged = Path(tmp) / path.name
        write(staged)
        os.replace(staged, path)
