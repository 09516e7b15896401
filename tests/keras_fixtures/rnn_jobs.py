"""Keras side of bnkit's sequence-layer tests: build Sequential models from JSON recipes.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python rnn_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}``; ``results_<flavour>_<job stem>.json`` in
``workdir`` maps task name -> ``"ok"`` or ``"Type: message"``.

* ``{"kind": "build", "name", "input": [dims], "layers": [[class, kwargs], ...], "x": npz,
  "functional": bool, "ids": bool, "user_mask": bool}`` (``user_mask``, Keras 3: the second
  layer is called with ``mask=ops.not_equal(inputs, 0)``): a Sequential (or functional chain) model on a float32
  (``ids``: int32) input (a nested ``[class, kwargs]`` under kwargs ``"layer"`` /
  ``"backward_layer"`` is built first, for Bidirectional) with seeded random weights
  (normal, std 0.5; BN variances uniform in [0.5, 2]), saved as ``<name>.h5`` and
  ``<name>.keras``; ``<name>_ref.npz`` holds ``y`` (inference on ``x`` of npz ``x``) and
  every weight as ``w/<layer index>/<weight index>``.
* ``{"kind": "predict", "name", "file", "x": npz}``: ``load_model(file)`` then inference on
  ``x`` -> ``<name>_pred.npz`` (``y``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import flavour_argument, import_keras, run_job  # noqa: E402

_, keras = import_keras(flavour_argument(), onednn="0")


def make_layer(spec: list[Any]) -> Any:
    cls, kwargs = spec
    kwargs = dict(kwargs)
    for key in ("layer", "backward_layer"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = make_layer(kwargs[key])
    return getattr(keras.layers, cls)(**kwargs)


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    dtype = "int32" if task.get("ids") else "float32"
    inputs = keras.Input(tuple(task["input"]), dtype=dtype, name="x")
    if task.get("functional"):
        y = inputs
        for index, spec in enumerate(task["layers"]):
            mask = keras.ops.not_equal(inputs, 0) if task.get("user_mask") and index == 1 else None
            if spec[0] == "Attention":  # self-attention: query = value
                y = make_layer(spec)([y, y])
            else:
                y = make_layer(spec)(y) if mask is None else make_layer(spec)(y, mask=mask)
        model = keras.Model(inputs, y, name=task["name"])
    else:
        model = keras.Sequential([inputs] + [make_layer(spec) for spec in task["layers"]], name=task["name"])
    rng = np.random.default_rng(7)
    arrays = {}
    for li, layer in enumerate(layer for layer in model.layers if type(layer).__name__ != "InputLayer"):
        for wi, weight in enumerate(layer.weights):
            path = weight.path if hasattr(weight, "path") else weight.name
            shape = tuple(weight.shape)
            if "variance" in path:
                value = rng.uniform(0.5, 2.0, shape)
            else:
                value = rng.normal(0.0, 0.5, shape)
            weight.assign(value.astype("float32"))
            arrays[f"w/{li}/{wi}"] = value.astype("float32")
    x = np.load(task["x"])["x"]
    y = np.asarray(model(x, training=False))
    model.save(str(work / f"{task['name']}.h5"))
    model.save(str(work / f"{task['name']}.keras"))
    np.savez(work / f"{task['name']}_ref.npz", x=x, y=y, **arrays)


def predict(task: dict[str, Any], work: Path) -> None:
    model = keras.models.load_model(task["file"], compile=False)
    x = np.load(task["x"])["x"]
    np.savez(work / f"{task['name']}_pred.npz", y=np.asarray(model(x, training=False)))


TASKS = {"build": build, "predict": predict}


def main() -> int:
    return run_job(TASKS)


if __name__ == "__main__":
    raise SystemExit(main())
