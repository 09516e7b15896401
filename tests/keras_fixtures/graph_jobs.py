"""Keras side of bnkit's graph tests (``tests/test_keras_graph.py``): the tasks of
``keras_jobs.py`` plus recipes for blocking layers, unusual layer names, nested models,
shared layers and channel layouts.  Runs in its own process::

    python graph_jobs.py {tf_keras|keras3} JOB.json

Task ``graph`` builds a recipe like keras_jobs' ``build`` (several inputs and outputs: ``x0``,
``y0``, ``y1``... in ``<name>_ref.npz``); ``predict_many`` loads a file and predicts on every
``x<i>`` of an npz.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras_jobs  # noqa: E402  (imports TensorFlow and the Keras flavour named on the command line)
from keras_jobs import FLAVOUR, L, keras  # noqa: E402


def blocked() -> Any:
    """Layers bnkit refuses: code (Lambda) and classes outside its table, several of each."""
    inp = keras.Input((6, 6, 3), name="x")
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    for suffix in "abcd":
        x = L.ActivityRegularization(l1=0.01, name=f"penalty_{suffix}")(x)
    x = L.UnitNormalization(name="unit")(x)
    x = L.Lambda(lambda t: t + 1.0, name="plus_one")(x)
    return keras.Model(inp, L.Dense(2, name="fc")(L.Flatten(name="flat")(x)), name="blocked")


def odd_names() -> Any:
    """Layer names with '/' (tf_keras only, as in its applications) or '.', one clashing with
    the safe module key of another, one a prefix group of others in ``.h5``."""
    sep = "/" if FLAVOUR == "tf_keras" else "."
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", name=f"conv1{sep}conv")(inp)
    x = L.BatchNormalization(name=f"conv1{sep}bn")(x)
    x = L.Activation("relu", name=f"conv1{sep}relu")(x)
    y = L.Conv2D(4, 1, name="conv1")(x)
    z = L.Conv2D(4, 1, name="conv1_conv")(x)
    x = L.Add(name="add.1")([x, y, z])
    x = L.GlobalAveragePooling2D(name=f"pool{sep}gap")(x)
    return keras.Model(inp, L.Dense(3, name="head.fc")(x), name="odd_names")


def _block(name: str, filters: int) -> Any:
    """A functional block with a skip connection."""
    inp = keras.Input((8, 8, filters), name=f"{name}_in")
    x = L.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(inp)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return keras.Model(inp, L.Add(name=f"{name}_add")([inp, L.ReLU(name=f"{name}_relu")(x)]), name=name)


def nested_models() -> Any:
    """A Sequential holding a functional model holding a Sequential, and a functional model
    inside the outer functional one; inner names clash with outer ones."""
    stem = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 1, name="conv"), L.BatchNormalization(name="bn")],
                            name="stem")
    inp = keras.Input((8, 8, 3), name="x")
    mid = keras.Model(inp, _block("block", 4)(stem(inp)), name="middle")
    body = keras.Sequential([keras.Input((8, 8, 3)), mid, L.Conv2D(2, 1, name="squeeze")], name="body")
    outer_in = keras.Input((8, 8, 3), name="image")
    x = body(outer_in)
    x = L.Conv2D(2, 1, name="conv")(x)  # same name as a layer inside `stem`
    return keras.Model(outer_in, L.Dense(3, name="fc")(L.Flatten(name="flat")(x)), name="outer")


def shared_layers() -> Any:
    """A conv called twice, a Dense called on two tensors, a nested model shared by two inputs."""
    left, right = keras.Input((8, 8, 3), name="left"), keras.Input((8, 8, 3), name="right")
    tower = _block("tower", 3)
    conv = L.Conv2D(3, 3, padding="same", name="shared_conv")
    a = conv(tower(left))
    b = conv(L.ReLU(name="relu")(conv(tower(right))))
    pooled = [L.GlobalAveragePooling2D(name=f"gap_{i}")(t) for i, t in enumerate((a, b))]
    dense = L.Dense(5, name="shared_fc")
    h = L.Concatenate(name="cat")([dense(pooled[0]), dense(pooled[1])])
    return keras.Model([left, right], [L.Dense(2, name="out")(h), b], name="shared")


def plain_cnn() -> Any:
    """A pure CNN with an image output and a vector output."""
    inp = keras.Input((12, 10, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    fmap = L.BatchNormalization(name="bn2")(x)
    y = L.Dense(4, name="fc")(L.GlobalAveragePooling2D(name="gap")(fmap))
    return keras.Model(inp, [fmap, y], name="plain_cnn")


def _build(task: dict[str, Any], work: Path) -> None:
    """keras_jobs' build, for models with several inputs or outputs too."""
    keras.utils.set_random_seed(1234)
    model = RECIPES[task["recipe"]]()
    rng = np.random.default_rng(99)
    keras_jobs.randomize(model, rng)
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    xs = [rng.normal(0.0, 1.0, (3,) + shape).astype("float32") for shape in shapes]
    name = task["name"]
    for fmt in task["formats"]:
        model.save(str(work / f"{name}.{fmt}"))
    if task.get("predict", True):
        ys = model(xs if len(xs) > 1 else xs[0], training=False)
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        arrays = {f"x{i}": x for i, x in enumerate(xs)} | {f"y{i}": np.asarray(y) for i, y in enumerate(ys)}
        np.savez(work / f"{name}_ref.npz", x=xs[0], y=np.asarray(ys[0]), **arrays)


def _predict(task: dict[str, Any], work: Path) -> None:
    """Load ``file`` and predict on every ``x<i>`` of npz ``x`` -> ``<name>_pred.npz`` (``y<i>``)."""
    model = keras.models.load_model(task["file"], compile=False)
    with np.load(task["x"]) as data:
        xs = [data[f"x{i}"] for i in range(sum(k.startswith("x") and k != "x" for k in data.files))]
    ys = model(xs if len(xs) > 1 else xs[0], training=False)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    np.savez(work / f"{task['name']}_pred.npz", **{f"y{i}": np.asarray(y) for i, y in enumerate(ys)})


RECIPES = {f.__name__: f for f in (blocked, odd_names, nested_models, shared_layers, plain_cnn,
                                   keras_jobs.channels_first)}
keras_jobs.TASKS.update(graph=_build, predict_many=_predict)

if __name__ == "__main__":
    raise SystemExit(keras_jobs.main())
