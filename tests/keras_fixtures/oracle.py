"""Run ``keras_jobs.py`` under tf_keras and Keras 3 in parallel subprocesses.

TensorFlow is never imported in the pytest process.  Both flavours start together so their
TensorFlow imports overlap; each returns ``{task name: "ok" | error text}``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.oracle_client import oracle_env

JOBS = Path(__file__).resolve().parent / "keras_jobs.py"
TIMEOUT_S = 300


def _env(flavour: str) -> dict[str, str]:
    # oneDNN provides TensorFlow's only CPU kernels for channels_first convolutions.
    return {**oracle_env(flavour), "TF_ENABLE_ONEDNN_OPTS": "1"}


def run_jobs(work: Path, tasks: dict[str, list[dict[str, Any]]], stage: str) -> dict[str, dict[str, str]]:
    """Run ``tasks[flavour]`` for every flavour at once; ``stage`` names the job files."""
    processes = {}
    for flavour, flavour_tasks in tasks.items():
        job = work / f"{stage}_{flavour}.json"
        job.write_text(json.dumps({"workdir": str(work), "tasks": flavour_tasks}), encoding="utf-8")
        processes[flavour] = subprocess.Popen(
            [sys.executable, str(JOBS), flavour, str(job)], env=_env(flavour),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results: dict[str, dict[str, str]] = {}
    for flavour, process in processes.items():
        try:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"Keras jobs ({flavour}, {stage}) timed out after {TIMEOUT_S} s", pytrace=False)
        out = work / f"results_{flavour}_{stage}_{flavour}.json"
        if process.returncode != 0 or not out.exists():
            pytest.fail(f"Keras jobs ({flavour}, {stage}) failed ({process.returncode}):\n{stderr[-6000:]}",
                        pytrace=False)
        results[flavour] = json.loads(out.read_text(encoding="utf-8"))
    return results


def require_ok(results: dict[str, dict[str, str]], flavour: str, name: str) -> None:
    """Fail the test with Keras' error if task ``name`` did not succeed."""
    status = results.get(flavour, {}).get(name, "not run")
    if status != "ok":
        pytest.fail(f"Keras task {name!r} ({flavour}) failed: {status}", pytrace=False)
