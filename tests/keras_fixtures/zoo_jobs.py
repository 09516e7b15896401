"""Build Keras applications as oracle fixtures (run in its own process, never under pytest).

    python zoo_jobs.py {tf_keras|keras3} job.json

``job.json``: ``{"workdir": str, "stage": "build"|"reload", "models": [...]}``.

*build*: each model ``{"app": "MobileNetV2", "size": 32}`` is built with ``weights=None``,
``classes=10`` (or the entry's ``classes``) and logits out (``classifier_activation=None`` where the application has it),
its BatchNormalization scales are randomised and its statistics calibrated on random images,
then perturbed (so BN matters, and deep networks stay well-conditioned), and it is saved
as ``<app>.h5`` and ``<app>.keras``.  Keras then reloads both files itself (a pair Keras cannot
reload is recorded and skipped by the tests, as the issue asks).  The inputs, Keras' outputs
and its parameter counts go to ``<app>_ref.npz`` / the results JSON.  The same application is
also built in float64 (``floatx``) with the same weights: its output ``y64`` is the nearly
exact answer, against which both Keras' and bnkit's float32 rounding can be measured (deep
networks with random weights amplify float32 rounding beyond 1e-5).

*reload*: each model ``{"app": ..., "files": [paths]}``: Keras loads each file (written by
bnkit) and predicts on the stored inputs; the outputs go to ``<file>.out.npy``.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FLAVOUR = sys.argv[1]
if FLAVOUR == "tf_keras":
    import tf_keras as keras  # noqa: E402
else:
    import keras  # noqa: E402

BATCH = 2


def build_app(app: str, size: int, classes: int = 10) -> Any:
    factory = getattr(keras.applications, app)
    kwargs: dict[str, Any] = {"weights": None, "input_shape": (size, size, 3), "classes": classes}
    if "classifier_activation" in inspect.signature(factory).parameters:
        kwargs["classifier_activation"] = None
    return factory(**kwargs)


def randomize(model: Any, rng: np.random.Generator) -> None:
    """Non-trivial BN scales and offsets (``calibrate`` sets the statistics), Normalization
    statistics; kernels keep Keras' init."""
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            values = []
            for weight in layer.weights:
                name = weight.name.split("/")[-1].split(":")[0]
                shape = tuple(weight.shape)
                if name == "gamma":
                    values.append(rng.uniform(0.6, 1.4, shape))
                elif name == "beta":
                    values.append(rng.normal(0.0, 0.1, shape))
                else:
                    values.append(np.asarray(weight.numpy()))
            layer.set_weights([v.astype("float32") for v in values])
        elif kind == "Normalization" and layer.weights:
            values = []
            for weight in layer.weights:
                name = weight.name.split("/")[-1].split(":")[0]
                shape = tuple(weight.shape)
                if name == "mean":
                    values.append(rng.uniform(0.3, 0.6, shape).astype("float32"))
                elif name == "variance":
                    values.append(rng.uniform(0.04, 0.09, shape).astype("float32"))
                else:
                    values.append(np.asarray(weight.numpy()))
            layer.set_weights(values)
            if hasattr(layer, "finalize_state"):  # Keras 3 computes from the adapted statistics here
                layer.finalize_state()


CALIBRATION_BATCH = 16


def random_images(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Images in [0, 255] that differ from each other as a whole: a coarse 4x4 random colour
    field blown up to the size, plus pixel noise.  Pure pixel noise gives every image nearly
    the same deep features, so the batch statistics of the last layers are tiny and any
    other image is many standard deviations away from them."""
    coarse = rng.uniform(0.0, 255.0, (count, 4, 4, 3))
    index = (np.arange(size) * 4) // size
    field = coarse[:, index][:, :, index]
    return (0.75 * field + 0.25 * rng.uniform(0.0, 255.0, (count, size, size, 3))).astype("float32")


def calibrate(model: Any, rng: np.random.Generator, size: int) -> None:
    """BN statistics measured on random images, conditioned, then perturbed.

    Random statistics make the deepest applications (EfficientNetV2M, ResNetRS200, ...)
    chaotic: every BN rescales by an arbitrary factor, the logits reach 1e5 and float32
    rounding alone moves them by tens of percent, in Keras as in bnkit.  One training-mode
    forward with ``momentum=0`` (and dropout off) sets each BN's moving statistics to the
    statistics of its actual input.  That alone is not enough: deep features of different
    images are nearly equal, so their variance is tiny next to their mean, and a BN dividing
    by that spread turns every rounding error into a large change.  Each BN therefore divides
    by the root mean square of its input (``variance + mean**2``), which no layer can amplify,
    and then its statistics are moved at random and compensated in ``gamma``/``beta``.
    """
    bns = [layer for layer in _all_layers(model) if type(layer).__name__ == "BatchNormalization"]
    if not bns:
        return
    dropouts = [layer for layer in _all_layers(model) if hasattr(layer, "rate")]
    saved = [(layer, layer.momentum) for layer in bns] + [(layer, layer.rate) for layer in dropouts]
    for layer in bns:
        layer.momentum = 0.0
    for layer in dropouts:
        layer.rate = 0.0
    try:
        model(random_images(rng, CALIBRATION_BATCH, size), training=True)
    finally:
        for layer, value in saved:
            setattr(layer, "momentum" if layer in bns else "rate", value)
    for layer in bns:
        _condition(layer, rng)


def _condition(layer: Any, rng: np.random.Generator) -> None:
    """Divide by the input's root mean square, then move the statistics at random and
    compensate in the scale and offset, so the layer computes the same function: a loader
    must use each statistic right, while the network keeps its conditioning (moving them
    without compensation compounds across 200 layers into chaos again)."""
    names = [weight.name.split("/")[-1].split(":")[0] for weight in layer.weights]
    values = {name: _weight(layer, name) for name in names}
    mean = values["moving_mean"]
    square = values["moving_variance"] + mean ** 2
    values["moving_variance"] = square
    if {"gamma", "beta"} <= set(values):
        eps = float(layer.epsilon)
        new_mean = mean + 0.5 * np.sqrt(square) * rng.normal(0.0, 1.0, mean.shape)
        new_var = square * rng.uniform(0.5, 2.0, square.shape)
        gamma = values["gamma"] * np.sqrt(new_var + eps) / np.sqrt(square + eps)
        beta = values["beta"] + gamma * (new_mean - mean) / np.sqrt(new_var + eps)
        values.update(gamma=gamma, beta=beta, moving_mean=new_mean, moving_variance=new_var)
    layer.set_weights([values[name].astype("float32") for name in names])


def _weight(layer: Any, name: str) -> np.ndarray:
    for weight in layer.weights:
        if weight.name.split("/")[-1].split(":")[0] == name:
            return np.asarray(weight.numpy(), dtype="float64")
    raise KeyError(f"{layer.name} has no {name}")


def _infer(model: Any, x: np.ndarray) -> np.ndarray:
    """Inference by an eager call (``predict`` may compile with XLA, whose CPU kernels round
    differently from one compilation to the next)."""
    return np.asarray(model(x, training=False))


def _set_floatx(name: str) -> None:
    if hasattr(keras, "config"):  # Keras 3: the global dtype policy too (it caches floatx)
        keras.config.set_floatx(name)
        keras.config.set_dtype_policy(name)
    else:
        keras.backend.set_floatx(name)


def float64_twin(entry: dict[str, Any], model: Any, x: np.ndarray) -> np.ndarray:
    """Keras' own output in float64: the application rebuilt under ``floatx="float64"`` with
    the float32 model's weights."""
    _set_floatx("float64")
    try:
        twin = build_app(entry["app"], int(entry["size"]), int(entry.get("classes", 10)))
        weights = model.get_weights()
        if len(weights) != len(twin.weights):
            raise RuntimeError(f"float64 twin has {len(twin.weights)} weights, the model {len(weights)}")
        twin.set_weights([np.asarray(w, dtype="float64") for w in weights])
        for layer in _all_layers(twin):
            if type(layer).__name__ == "Normalization" and hasattr(layer, "finalize_state"):
                layer.finalize_state()
        return _infer(twin, x.astype("float64"))
    finally:
        _set_floatx("float32")


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_all_layers(layer))
    return layers


def _counts(model: Any) -> dict[str, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    frozen = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}


def build(entry: dict[str, Any], work: Path) -> dict[str, Any]:
    app, size = entry["app"], int(entry["size"])
    rng = np.random.default_rng(zlib.crc32(app.encode()))
    start = time.perf_counter()
    model = build_app(app, size, int(entry.get("classes", 10)))
    randomize(model, rng)
    calibrate(model, rng, size)
    x = random_images(rng, BATCH, size)
    y = _infer(model, x)
    result: dict[str, Any] = {"counts": _counts(model), "layers": len(model.layers),
                              "classes": sorted({type(layer).__name__ for layer in _all_layers(model)}),
                              "files": {}}
    y64 = float64_twin(entry, model, x)
    if y64.dtype != np.float64:
        raise RuntimeError(f"the float64 twin computed in {y64.dtype}")
    np.savez(work / f"{app}_ref.npz", x=x, y=y, y64=y64)
    for fmt in entry.get("formats", ("h5", "keras")):
        path = work / f"{app}.{fmt}"
        try:
            model.save(path)
        except Exception as error:  # noqa: BLE001 - the oracle reports, the test decides
            result["files"][fmt] = f"Keras cannot save it: {type(error).__name__}: {str(error)[:300]}"
            continue
        try:
            again = keras.models.load_model(path, compile=False)
            z = _infer(again, x)
            scale = float(np.max(np.abs(y))) or 1.0
            diff = float(np.max(np.abs(z - y))) / scale
            result["files"][fmt] = "ok" if diff <= 1e-5 else f"Keras reloads it with outputs off by {diff:.2e}"
        except Exception as error:  # noqa: BLE001
            result["files"][fmt] = f"Keras cannot reload it: {type(error).__name__}: {str(error)[:300]}"
    result["seconds"] = time.perf_counter() - start
    keras.backend.clear_session()
    return result


def reload(entry: dict[str, Any], work: Path) -> dict[str, Any]:
    ref = np.load(work / f"{entry['app']}_ref.npz")
    result: dict[str, Any] = {}
    for file in entry["files"]:
        try:
            model = keras.models.load_model(file, compile=False)
            np.save(f"{file}.out.npy", _infer(model, ref["x"]))
            result[file] = "ok"
        except Exception as error:  # noqa: BLE001
            result[file] = f"{type(error).__name__}: {str(error)[:300]}"
        keras.backend.clear_session()
    return result


def main() -> int:
    job = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
    work = Path(job["workdir"])
    stage = {"build": build, "reload": reload}[job["stage"]]
    results: dict[str, Any] = {}
    out = work / f"zoo_{FLAVOUR}_{job['stage']}.json"
    out.write_text("{}", encoding="utf-8")  # also the answer when this flavour has none of the models asked for
    for entry in job["models"]:
        try:
            results[entry["app"]] = stage(entry, work)
        except Exception:  # noqa: BLE001
            results[entry["app"]] = {"error": traceback.format_exc()[-2000:]}
        out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
