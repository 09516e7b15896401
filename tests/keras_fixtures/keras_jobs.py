"""Keras side of bnkit's Keras-interop tests: build, save, train and load Keras models.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python keras_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}``; every file a task writes goes into
``workdir``, and ``results.json`` there maps ``task name -> "ok" | "Type: message"``.

Tasks:

* ``{"kind": "build", "name", "recipe", "formats": [...], "train": bool}``: build a recipe
  model with random weights and statistics, save it as ``<name>.<format>`` for each format
  (``h5``, ``keras``, ``w.h5`` = legacy save_weights, ``weights.h5``), and write
  ``<name>_ref.npz`` (``x``, ``y``: inference outputs, plus every weight as
  ``w/<layer>/<weight>``).  With ``train``: three SGD steps (lr 0.05, MSE loss, GradientTape,
  training=True) on ``xs``/``ts``, then ``<name>_train.npz`` with the inputs, every weight
  after training and ``y`` after training.
* ``{"kind": "predict", "name", "file", "x"}``: ``load_model(file)`` and predict on array
  ``x`` of npz ``x`` -> ``<name>_pred.npz`` (``y``).
* ``{"kind": "vgg16_app", "name", "weights", "x", "input_shape", "include_top"}``:
  ``applications.VGG16(weights=file)`` predicting on ``x`` -> ``<name>_pred.npz``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import flavour_argument, import_keras, run_job  # noqa: E402

FLAVOUR = flavour_argument()
tf, keras = import_keras(FLAVOUR, onednn="1")

L = keras.layers
LR, STEPS, BATCH = 0.05, 3, 8


def tiny_cnn() -> Any:
    """Seed 001: Conv2D 32 3x3 same relu on 64x64x1, BN(momentum=0.15), Flatten, Dense 100, Dense 10."""
    return keras.Sequential([keras.Input((64, 64, 1)), L.Conv2D(32, 3, padding="same", activation="relu"),
                             L.BatchNormalization(momentum=0.15), L.Flatten(), L.Dense(100, activation="relu"),
                             L.Dense(10, activation="softmax")])


def small() -> Any:
    """The committed fixture model: every weight layout in a few hundred values."""
    return keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
                             L.BatchNormalization(name="bn"), L.MaxPooling2D(name="pool"), L.Flatten(name="flat"),
                             L.Dense(3, activation="softmax", name="out")], name="small")


def residual() -> Any:
    inp = keras.Input((16, 16, 3), name="image")
    a = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inp)
    a = L.BatchNormalization(name="stem_bn")(a)
    a = L.ReLU(max_value=6.0, name="stem_relu")(a)
    b = L.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu", name="branch_a")(a)
    c = L.Conv2D(8, 1, use_bias=False, name="branch_b")(a)
    d = L.Conv2D(8, 2, padding="same", name="even")(a)
    s = L.Add(name="add")([a, b, d])
    cat = L.Concatenate(name="concat")([s, c])
    p1 = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(cat)
    p2 = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool")(cat)
    p3 = L.AveragePooling2D(2, name="avgpool_valid")(cat)
    m = L.Add(name="add_pools")([p1, p2, p3])
    h = L.Concatenate(name="heads")([L.GlobalAveragePooling2D(name="gap")(m), L.GlobalMaxPooling2D(name="gmp")(m)])
    h = L.Dense(12, name="fc")(h)
    h = L.BatchNormalization(name="fc_bn")(h)
    h = L.Activation("tanh", name="fc_act")(h)
    h = L.Dropout(0.3, name="drop")(h)
    out = L.Softmax(name="probs")(L.Dense(5, name="logits")(h))
    return keras.Model(inp, out, name="residual")


def bn_variants() -> Any:
    inp = keras.Input((6, 6, 4), name="x")
    x = L.Conv2D(4, 1, name="pre")(inp)
    x = L.BatchNormalization(axis=1, name="bn_h")(x)
    x = L.BatchNormalization(axis=2, name="bn_w")(x)
    x = L.BatchNormalization(center=False, name="bn_nocenter")(x)
    x = L.BatchNormalization(scale=False, name="bn_noscale")(x)
    x = L.BatchNormalization(renorm=True, renorm_clipping={"rmax": 1.5, "rmin": 0.67, "dmax": 0.5},
                             renorm_momentum=0.9, momentum=0.8, name="bn_renorm")(x)
    if FLAVOUR == "tf_keras":
        x = L.BatchNormalization(virtual_batch_size=4, momentum=0.7, name="bn_ghost")(x)
        x = L.BatchNormalization(axis=[1, 2], name="bn_multi")(x)
    x = L.Conv2D(3, 3, name="conv")(x)
    x = L.Flatten(data_format="channels_first", name="flat")(x)
    x = L.Dense(6, name="dense")(x)
    x = L.BatchNormalization(epsilon=1e-2, momentum=0.5, name="bn_dense")(x)
    return keras.Model(inp, x, name="bn_variants")


def channels_first() -> Any:
    cf = "channels_first"
    inp = keras.Input((3, 12, 12), name="x")
    x = L.Conv2D(6, 3, padding="same", data_format=cf, activation="relu", name="c1")(inp)
    x = L.BatchNormalization(axis=1, name="bn1")(x)
    x = L.AveragePooling2D(2, data_format=cf, name="pool")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", data_format=cf, name="c2")(x)
    x = L.ZeroPadding2D(((1, 0), (0, 2)), data_format=cf, name="zp")(x)
    x = L.Flatten(data_format=cf, name="flat")(x)
    return keras.Model(inp, L.Dense(7, name="fc")(x), name="channels_first")


def nested() -> Any:
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c1"), L.BatchNormalization(name="bn1"),
                              L.Conv2D(2, 3, name="c2")], name="inner")
    inp = keras.Input((8, 8, 3), name="x")
    y = L.Dense(3, name="d")(L.Flatten(name="fl")(inner(inp)))
    return keras.Model(inp, y, name="outer")


def vgg16_notop() -> Any:
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))


RECIPES = {f.__name__: f for f in (tiny_cnn, small, residual, bn_variants, channels_first, nested, vgg16_notop)}


def randomize(model: Any, rng: np.random.Generator) -> None:
    """Random biases, BN parameters and statistics (kernels keep Keras' seeded init)."""
    for weight in model.weights:
        name = weight.path if hasattr(weight, "path") else weight.name
        shape = tuple(weight.shape)
        if any(k in name for k in ("moving_variance", "stddev")):
            value = rng.uniform(0.5, 2.0, shape)
        elif "gamma" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif any(k in name for k in ("beta", "moving_mean", "renorm_mean", "bias")):
            value = rng.normal(0.0, 0.2, shape)
        else:
            continue
        weight.assign(value.astype("float32"))


def all_weights(model: Any, prefix: str = "w") -> dict[str, np.ndarray]:
    """Every weight with fewer than 2**20 values, as ``w/<layer>/<weight>``."""
    out = {}
    for layer in model.layers:
        if hasattr(layer, "layers"):
            out.update(all_weights(layer, prefix))
            continue
        for weight in layer.weights:
            short = (weight.path if hasattr(weight, "path") else weight.name).split("/")[-1].split(":")[0]
            if int(np.prod(weight.shape)) < 2**20:
                out[f"{prefix}/{layer.name}/{short}"] = np.asarray(weight.numpy())
    return out


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model = RECIPES[task["recipe"]]()
    rng = np.random.default_rng(99)
    randomize(model, rng)
    in_shape = tuple(model.input_shape[1:])
    x = rng.normal(0.0, 1.0, (4,) + in_shape).astype("float32")
    name = task["name"]
    for fmt in task["formats"]:
        path = work / f"{name}.{fmt}"
        if fmt in ("w.h5", "weights.h5"):
            model.save_weights(str(path))
        else:
            model.save(str(path))
    np.savez(work / f"{name}_ref.npz", x=x, y=np.asarray(model(x, training=False)), **all_weights(model))
    if task.get("train"):
        xs = rng.normal(0.0, 1.0, (STEPS, BATCH) + in_shape).astype("float32")
        out_shape = tuple(model.output_shape[1:])
        ts = rng.normal(0.0, 1.0, (STEPS, BATCH) + out_shape).astype("float32")
        optimizer = keras.optimizers.SGD(learning_rate=LR)
        for step in range(STEPS):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xs[step], training=True) - ts[step]))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        np.savez(work / f"{name}_train.npz", xs=xs, ts=ts, x=x, y=np.asarray(model(x, training=False)),
                 **all_weights(model))


def predict(task: dict[str, Any], work: Path) -> None:
    model = keras.models.load_model(task["file"], compile=False)
    x = np.load(task["x"])["x"]
    np.savez(work / f"{task['name']}_pred.npz", y=np.asarray(model(x, training=False)))


def vgg16_app(task: dict[str, Any], work: Path) -> None:
    model = keras.applications.VGG16(weights=task["weights"], include_top=task["include_top"],
                                     input_shape=tuple(task["input_shape"]), classes=task.get("classes", 1000))
    x = np.load(task["x"])["x"]
    np.savez(work / f"{task['name']}_pred.npz", y=np.asarray(model(x, training=False)))


TASKS = {"build": build, "predict": predict, "vgg16_app": vgg16_app}


def main() -> int:
    return run_job(TASKS)


if __name__ == "__main__":
    raise SystemExit(main())
