"""Run Keras (tf_keras 2.21 or Keras 3) as an oracle in a subprocess.

The pytest process must never import TensorFlow or Keras (they conflict with torch in one
interpreter), so :func:`run_keras` writes the cases to a temporary directory, runs
``tests/oracle/keras_runner.py`` with the current interpreter and reads the results
back. TensorFlow takes seconds to start: build all cases of a test module first and call
:func:`run_keras` once per flavour from a module-scoped fixture.

The case format is documented in ``tests/oracle/keras_runner.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RUNNER = Path(__file__).resolve().parent / "oracle" / "keras_runner.py"
TIMEOUT_S = 600

OracleResults = dict[str, np.ndarray | str]


def oracle_env(flavour: str) -> dict[str, str]:
    """The subprocess environment for one Keras flavour."""
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_ENABLE_ONEDNN_OPTS="0",
        PYTHONWARNINGS="ignore",
    )
    if flavour == "tf_keras":
        env["TF_USE_LEGACY_KERAS"] = "1"
    elif flavour == "keras3":
        env.pop("TF_USE_LEGACY_KERAS", None)
        env["KERAS_BACKEND"] = "tensorflow"
    else:
        raise ValueError(f"Invalid `flavour`: expected 'tf_keras' or 'keras3'. Received: flavour={flavour!r}")
    return env


def run_keras(
    cases: Sequence[Mapping[str, Any]],
    arrays: Mapping[str, np.ndarray],
    flavour: str = "tf_keras",
) -> OracleResults:
    """Run ``cases`` under one Keras flavour; return ``{key: array or str}``.

    A case without a ``"keras"`` field gets ``flavour``; one naming another flavour is a
    caller error. String results (errors, tracebacks) come back as ``str``.
    """
    prepared = []
    for case in cases:
        case = dict(case)
        if case.setdefault("keras", flavour) != flavour:
            raise ValueError(f"case {case.get('name')!r} is for {case['keras']!r}, not {flavour!r}")
        prepared.append(case)
    with tempfile.TemporaryDirectory(prefix="bnkit-oracle-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        arrays_path = Path(tmp) / "arrays.npz"
        out_path = Path(tmp) / "out.npz"
        spec_path.write_text(json.dumps({"cases": prepared}), encoding="utf-8")
        np.savez(arrays_path, **{key: np.asarray(value) for key, value in arrays.items()})
        proc = subprocess.run(
            [sys.executable, str(RUNNER), str(spec_path), str(arrays_path), str(out_path)],
            env=oracle_env(flavour),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0 or not out_path.exists():
            pytest.fail(
                f"Keras oracle ({flavour}) failed with exit code {proc.returncode}:\n{proc.stderr[-8000:]}",
                pytrace=False,
            )
        with np.load(out_path, allow_pickle=False) as loaded:
            return {key: _unwrap(loaded[key]) for key in loaded.files}


def _unwrap(value: np.ndarray) -> np.ndarray | str:
    if value.dtype.kind == "U" and value.ndim == 0:
        return str(value)
    return value


def case_error(results: Mapping[str, np.ndarray | str], name: str) -> str | None:
    """The ``"Type: message"`` Keras raised for case ``name``, or None."""
    error = results.get(f"{name}/error")
    return None if error is None else str(error)


def case_array(results: Mapping[str, np.ndarray | str], key: str) -> np.ndarray:
    """Result ``key`` as an array; fails the test with the Keras error if there is none."""
    value = results.get(key)
    if value is None or isinstance(value, str):
        name = key.split("/")[0]
        pytest.fail(f"oracle has no array {key!r}; Keras error for {name!r}: {case_error(results, name)}")
    return value


def run_jobs(script: Path, work: Path, tasks: Mapping[str, Sequence[Mapping[str, Any]]],
             stage: str) -> dict[str, dict[str, str]]:
    """Run each flavour's ``tasks`` through a fixture ``script`` (one that ends in
    ``_flavour.run_job``), one Keras process per flavour, all at once; ``{flavour: {task name:
    "ok" or the failure}}``.  A process that fails as a whole fails the test."""
    processes = {}
    for flavour, flavour_tasks in tasks.items():
        job = work / f"{stage}_{flavour}.json"
        job.write_text(json.dumps({"workdir": str(work), "tasks": list(flavour_tasks)}), encoding="utf-8")
        processes[flavour] = subprocess.Popen([sys.executable, str(script), flavour, str(job)],
                                              env=oracle_env(flavour), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
    results = {}
    for flavour, process in processes.items():
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        out = work / f"results_{flavour}_{stage}_{flavour}.json"
        if process.returncode != 0 or not out.exists():
            pytest.fail(f"Keras jobs ({flavour}, {stage}) failed:\n{stderr[-6000:]}", pytrace=False)
        results[flavour] = json.loads(out.read_text(encoding="utf-8"))
    return results


def require(results: Mapping[str, Mapping[str, str]], flavour: str, name: str) -> None:
    """Fail the test (with Keras' error) unless Keras ran task ``name`` of ``flavour``."""
    status = results[flavour].get(name, "not run")
    if status != "ok":
        pytest.fail(f"Keras task {name!r} ({flavour}) failed: {status}", pytrace=False)


def write_back(work: Path, results: Mapping[str, Mapping[str, str]], cases: Sequence[tuple[str, str]],
               inputs: Callable[[str, str], dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """bnkit loads each ``<flavour>_<model>.keras`` Keras built (``cases``: ``(model, flavour)``)
    and writes it back as ``bnkit_<flavour>_<model>.keras`` and ``.h5``; returns the Keras
    ``predict`` tasks for those files (``inputs(model, flavour)``: where each task's inputs are)."""
    from bnkit.keras import load_model, save_model

    tasks: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in results}
    for model_name, flavour in cases:
        name = f"{flavour}_{model_name}"
        if results[flavour].get(name) != "ok":
            continue  # the test of that model reports Keras' failure
        model = load_model(work / f"{name}.keras")
        for suffix in ("keras", "h5"):
            target = work / f"bnkit_{name}.{suffix}"
            save_model(model, target)
            tasks[flavour].append({"kind": "predict", "name": f"bnkit_{name}_{suffix}", "file": str(target),
                                   **inputs(model_name, flavour)})
    return tasks


def npz_inputs(ref: Any) -> list[Any]:
    """The inputs ``x0, x1, ...`` of an oracle reference (a loaded ``.npz``) as torch tensors."""
    import torch

    count = sum(1 for key in ref.files if key[:1] == "x" and key[1:].isdigit())
    return [torch.from_numpy(ref[f"x{i}"]) for i in range(count)]


def predict(model: Any, inputs: Sequence[Any]) -> np.ndarray:
    """``model(*inputs)`` without autograd, as NumPy."""
    import torch

    with torch.no_grad():
        return model(*inputs).numpy()


def relative_error(y: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference over max abs expected value.  NaN (a masked mean over no step) must
    be exactly where Keras has it; the other entries are compared."""
    assert y.shape == expected.shape, f"shape {y.shape}, Keras {expected.shape}"
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(y), nan)
    if nan.all():
        return 0.0
    return float(np.abs(y[~nan] - expected[~nan]).max() / max(np.abs(expected[~nan]).max(), 1e-12))


def round_trip_npz(script: Path, work: Path, results: Mapping[str, Mapping[str, str]],
                   cases: Sequence[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """:func:`write_back` every case whose reference is ``<flavour>_<model>_ref.npz`` (inputs
    ``x0, x1, ...``), then Keras (``script``'s ``predict`` task) reloads and runs each file."""
    tasks = write_back(work, results, cases, lambda model, flavour: {"ref": str(work / f"{flavour}_{model}_ref.npz")})
    return run_jobs(script, work, tasks, "predict")


def check_round_trip(work: Path, results: Mapping[str, Mapping[str, str]], flavour: str, model_name: str,
                     suffix: str, tolerance: float) -> Any:
    """The file bnkit wrote for ``(model_name, flavour)`` as ``suffix``: Keras' reload of it and
    bnkit's own gave the model's reference output within ``tolerance``; returns bnkit's reload."""
    from bnkit.keras import load_model

    name = f"bnkit_{flavour}_{model_name}"
    require(results, flavour, f"{name}_{suffix}")
    ref = np.load(work / f"{flavour}_{model_name}_ref.npz")
    assert relative_error(np.load(work / f"{name}_{suffix}_pred.npz")["y"], ref["y"]) <= tolerance
    again = load_model(work / f"{name}.{suffix}")  # and bnkit reads its own file back
    assert relative_error(predict(again, npz_inputs(ref)), ref["y"]) <= tolerance
    return again

