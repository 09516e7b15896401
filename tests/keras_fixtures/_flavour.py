"""What the Keras-side fixture scripts share: importing one Keras flavour, running a job.

The scripts run as ``python tests/keras_fixtures/<script>.py ...`` in their own process
(TensorFlow and torch must not share one interpreter), so this folder is ``sys.path[0]``
and they import this module as ``_flavour``.

* :func:`import_keras` sets TensorFlow's environment for a flavour (``tf_keras``: tf_keras
  2.x through ``TF_USE_LEGACY_KERAS``; ``keras3``: Keras 3 on the TensorFlow backend), then
  imports TensorFlow first, as Keras expects, and the flavour's Keras.
* :func:`predictor` makes the usual ``predict`` task: Keras reloads a file bnkit wrote and
  runs it on the inputs ``x0, x1, ...`` stored with the reference.
* :func:`run_job` reads ``JOB.json`` (``{"workdir": dir, "tasks": [task, ...]}``), runs every
  task through its ``kind`` and writes ``results_<flavour>_<job stem>.json`` in ``workdir``,
  mapping task name -> ``"ok"`` or :func:`failure`'s text.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

#: A task: ``(task dict, workdir)``; what it writes goes into ``workdir``.
Task = Callable[[dict[str, Any], Path], None]


def flavour_argument(argv: Sequence[str] = sys.argv) -> str:
    """The flavour named first on the command line (``tf_keras`` when none is)."""
    return argv[1] if len(argv) > 1 else "tf_keras"


def import_keras(flavour: str, onednn: str | None = None) -> tuple[ModuleType, ModuleType]:
    """``(tensorflow, keras)`` for ``flavour`` (``tf_keras`` or ``keras3``), on the CPU.

    ``onednn`` (``"0"``/``"1"``), when given, sets ``TF_ENABLE_ONEDNN_OPTS``; otherwise the
    caller's environment decides.
    """
    os.environ.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    if onednn is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn
    if flavour == "tf_keras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    else:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        os.environ["KERAS_BACKEND"] = "tensorflow"

    import tensorflow

    if flavour == "tf_keras":
        import tf_keras as keras
    else:
        import keras
    return tensorflow, keras


def failure(error: BaseException) -> str:
    """A failed task as the tests report it: type, message and the end of the traceback."""
    return f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"


def stored_inputs(path: str | Path) -> list[Any]:
    """The arrays ``x0, x1, ...`` of an ``.npz`` reference, in order."""
    with np.load(path) as ref:
        return [ref[f"x{i}"] for i in range(sum(1 for key in ref.files if key[:1] == "x" and key[1:].isdigit()))]


def predictor(keras: ModuleType, run: Callable[[Any, list[Any]], Any]) -> Task:
    """A ``predict`` task: ``{"file": written file, "ref": reference .npz, "name": ...}`` ->
    ``<name>_pred.npz`` holding ``y = run(model, inputs)`` of the model Keras reloaded."""
    def predict(task: dict[str, Any], work: Path) -> None:
        model = keras.models.load_model(task["file"], compile=False)
        np.savez(work / f"{task['name']}_pred.npz", y=np.asarray(run(model, stored_inputs(task["ref"]))))
    return predict


def save_and_reload(keras: ModuleType, model: Any, stem: Path, run: Callable[[Any], Any],
                    unreadable: Sequence[str] = ("NotEqual",)) -> dict[str, Any]:
    """Save ``model`` as ``<stem>.h5`` and ``<stem>.keras``; ``{"y_h5": ..., "y_keras": ...}``:
    ``run`` of Keras' own reload of each file.  A file Keras cannot read back for a reason
    named in ``unreadable`` (Keras 3 cannot rebuild the mask operations, ``NotEqual``/``Any``,
    of its own ``.h5`` files) has no entry; any other error propagates."""
    outputs = {}
    for suffix in ("h5", "keras"):
        path = str(stem) + "." + suffix
        model.save(path)
        try:
            outputs[f"y_{suffix}"] = np.asarray(run(keras.models.load_model(path, compile=False)))
        except ValueError as error:
            if not any(reason in str(error) for reason in unreadable):
                raise
    return outputs


def run_job(tasks: Mapping[str, Task], argv: Sequence[str] = sys.argv) -> int:
    """Run ``JOB.json`` (``argv[2]``) for the flavour ``argv[1]``; the exit status.

    A task that raises is recorded with :func:`failure` and the next one runs: the test
    that asked for it decides what the error means.
    """
    job_file = Path(argv[2])
    job = json.loads(job_file.read_text(encoding="utf-8"))
    work = Path(job["workdir"])
    results: dict[str, str] = {}
    for task in job["tasks"]:
        try:
            tasks[task["kind"]](task, work)
            results[task["name"]] = "ok"
        except Exception as error:  # noqa: BLE001 - reported to the test, which decides
            results[task["name"]] = failure(error)
    out = work / f"results_{flavour_argument(argv)}_{job_file.stem}.json"
    out.write_text(json.dumps(results), encoding="utf-8")
    return 0
