"""Keras side of bnkit's tests of Keras 3's ``glu`` activation: build :data:`MODELS`.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python glu_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}`` (see :mod:`_flavour`).

* ``{"kind": "build", "name", "model"}`` (Keras 3): the model ``MODELS[model]`` with seeded
  random weights, saved as ``<name>.h5`` and ``<name>.keras``; ``<name>_ref.npz`` holds its
  input ``x0``, its inference output ``y``, ``y_h5``/``y_keras`` (Keras 3 reloading each
  file) and ``<name>_shapes.json`` the shape of the tensor each layer computes (batch as
  None; Keras 3's own summary keeps the unhalved shape, which is not what it computes).
* ``{"kind": "build_plain", "name"}`` (tf_keras): ``Dense(8, activation="relu")``, saved as
  ``<name>.h5`` and ``<name>.keras`` (the test then renames the activation ``glu``).
* ``{"kind": "no_glu"}``: raises unless ``keras.activations.get("glu")`` fails (tf_keras).
* ``{"kind": "predict", "name", "file", "ref"}``: ``load_model(file)``, inference on the
  inputs of npz ``ref`` -> ``<name>_pred.npz`` (``y``).  A file Keras refuses fails the task.

Keras 3 computes ``glu`` on its tensors but keeps the unhalved shape on its symbolic ones,
so a layer that checks its input shape after a glu (``Dense``) fails when called: the
models end in the glu, or follow it only with layers that take any shape.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import _flavour

FLAVOUR = _flavour.flavour_argument()
tf, keras = _flavour.import_keras(FLAVOUR, onednn="0")
L = keras.layers


def _x(*shape: int) -> np.ndarray:
    return np.random.default_rng(5).normal(0.0, 1.0, (4, *shape)).astype(np.float32)


def dense_glu() -> tuple[Any, np.ndarray]:
    """Dense(8, activation="glu") as the output: 4 features."""
    x = keras.Input((6,), name="x")
    return keras.Model(x, L.Dense(8, activation="glu", name="gated")(L.Dense(5, activation="relu", name="d")(x))), \
        _x(6)


def activation_glu() -> tuple[Any, np.ndarray]:
    """Activation("glu") on a Dense's 10 features: 5."""
    x = keras.Input((6,), name="x")
    return keras.Model(x, L.Activation("glu", name="glu")(L.Dense(10, name="d")(x))), _x(6)


def sequence_glu() -> tuple[Any, np.ndarray]:
    """A per-step Dense glu on a sequence, then layers that take any shape."""
    x = keras.Input((5, 6), name="x")
    y = L.Dense(8, activation="glu", name="gated")(x)
    return keras.Model(x, L.Dropout(0.3, name="drop")(L.Activation("tanh", name="tanh")(y))), _x(5, 6)


def two_outputs() -> tuple[Any, np.ndarray]:
    """Both forms side by side, as two outputs."""
    x = keras.Input((6,), name="x")
    h = L.Dense(8, activation="relu", name="d")(x)
    return keras.Model(x, [L.Dense(6, activation="glu", name="gated")(h), L.Activation("glu", name="glu")(h)]), _x(6)


def sequential_glu() -> tuple[Any, np.ndarray]:
    model = keras.Sequential([keras.Input((6,)), L.Dense(4, activation="relu", name="d"),
                              L.Dense(12, activation="glu", name="gated")], name="seq")
    return model, _x(6)


MODELS: dict[str, Callable[[], tuple[Any, np.ndarray]]] = {
    fn.__name__: fn for fn in (dense_glu, activation_glu, sequence_glu, two_outputs, sequential_glu)}


def _run(model: Any, x: np.ndarray) -> list[np.ndarray]:
    out = model(x, training=False)
    return [np.asarray(y) for y in (out if isinstance(out, (list, tuple)) else [out])]


def _arrays(prefix: str, ys: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": y for i, y in enumerate(ys)}


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model, x = MODELS[task["model"]]()
    rng = np.random.default_rng(7)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, 0.5, tuple(weight.shape)).astype("float32"))
    ys = _run(model, x)
    shapes = {}
    for layer in model.layers:
        if not isinstance(layer, L.InputLayer):
            got = _run(keras.Model(model.inputs, layer.output), x)[0]
            shapes[layer.name] = [None, *got.shape[1:]]
    arrays = {"x0": x, **_arrays("y", ys)}
    for suffix in ("h5", "keras"):
        path = str(work / f"{task['name']}.{suffix}")
        model.save(path)
        arrays.update(_arrays(f"y_{suffix}_", _run(keras.models.load_model(path, compile=False), x)))
    np.savez(work / f"{task['name']}_ref.npz", **arrays)
    (work / f"{task['name']}_shapes.json").write_text(json.dumps(shapes), encoding="utf-8")


def build_plain(task: dict[str, Any], work: Path) -> None:
    x = keras.Input((6,), name="x")
    model = keras.Model(x, L.Dense(8, activation="relu", name="gated")(x))
    for suffix in ("h5", "keras"):
        model.save(str(work / f"{task['name']}.{suffix}"))


def no_glu(task: dict[str, Any], work: Path) -> None:
    try:
        keras.activations.get("glu")
    except ValueError:
        return
    raise AssertionError(f"{FLAVOUR} knows the activation 'glu'")


def predict(task: dict[str, Any], work: Path) -> None:
    model = keras.models.load_model(task["file"], compile=False)
    ref = np.load(task["ref"])
    np.savez(work / f"{task['name']}_pred.npz", **_arrays("y", _run(model, ref["x0"])))


if __name__ == "__main__":
    raise SystemExit(_flavour.run_job({"build": build, "build_plain": build_plain, "no_glu": no_glu,
                                       "predict": predict}))
