"""Run one attack in a child process with a time cap and an address-space cap.

``run_isolated(tmp_path, "case_name", *args)`` starts ``python tests/_isolated.py`` in a
fresh working folder inside ``tmp_path`` (``HOME`` and ``TMPDIR`` point there too), which
sets ``RLIMIT_AS`` before importing anything, calls ``tests._attack_cases.<case_name>(*args)``
and prints one JSON line: ``{"ok": value}`` or ``{"error": class name, "message": text}``.
The parent sees a signal death, a timeout or a non-JSON exit as such, never as a pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@result@@"


@dataclass
class Outcome:
    """What happened in the child: ``kind`` is "ok", "error", "signal", "timeout" or "broken"."""

    kind: str
    value: Any = None
    error: str = ""
    message: str = ""
    returncode: int | None = None
    stderr: str = ""
    workdir: Path | None = None

    def __str__(self) -> str:
        return (f"{self.kind} (rc={self.returncode}) {self.error}: {self.message[:400]} "
                f"{self.value!r:.200} stderr tail: {self.stderr[-800:]}")


def run_isolated(tmp_path: Path, case: str, *args: Any, timeout: float = 60.0,
                 memory: int = 6 << 30) -> Outcome:
    """Run ``tests._attack_cases.<case>(*args)`` in a capped child process (see the module doc)."""
    workdir = tmp_path / f"run-{case}"
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(HOME=str(workdir), TMPDIR=str(workdir / "tmp"), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    command = [sys.executable, str(Path(__file__).resolve()), str(memory), case, json.dumps(args)]
    try:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return Outcome("timeout", stderr=str(expired.stderr or ""), workdir=workdir)
    if done.returncode < 0:
        return Outcome("signal", returncode=done.returncode, stderr=done.stderr, workdir=workdir)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        return Outcome("broken", returncode=done.returncode, stderr=done.stderr + done.stdout, workdir=workdir)
    result = json.loads(lines[-1][len(MARK):])
    if "error" in result:
        return Outcome("error", error=result["error"], message=result["message"], returncode=done.returncode,
                       stderr=done.stderr, workdir=workdir)
    return Outcome("ok", value=result.get("ok"), returncode=done.returncode, stderr=done.stderr, workdir=workdir)


def run_batch(tmp_path: Path, calls: list[tuple[str, tuple[Any, ...]]], *, timeout: float = 120.0,
              memory: int = 6 << 30) -> list[Outcome]:
    """Several cases in one capped child (they share its start-up cost); one Outcome per case.

    If the child dies, hangs or breaks, every case gets that Outcome.
    """
    outcome = run_isolated(tmp_path, "batch", [[case, list(args)] for case, args in calls],
                           timeout=timeout, memory=memory)
    if outcome.kind != "ok":
        return [outcome] * len(calls)
    return [Outcome("error", error=r["error"], message=r["message"], workdir=outcome.workdir) if "error" in r
            else Outcome("ok", value=r.get("ok"), workdir=outcome.workdir) for r in outcome.value]


def _child() -> None:
    import resource

    memory, case, args = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.path[:0] = [str(ROOT), str(ROOT / "src")]
    from tests import _attack_cases

    try:
        result: dict[str, Any] = {"ok": getattr(_attack_cases, case)(*args)}
    except Exception as error:  # noqa: BLE001 - reported to the parent, which judges it
        result = {"error": type(error).__name__, "message": str(error)}
    print(MARK + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    _child()
