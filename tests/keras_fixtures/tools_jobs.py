"""Keras side of ``tests/test_keras_tools.py`` and ``tests/test_keras_cli.py`` (tf_keras 2.21).

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python tests/keras_fixtures/tools_jobs.py build WORKDIR [FIXTURE.h5 ...]
    python tests/keras_fixtures/tools_jobs.py predict JOB.json

``build`` builds the recipe models below with random BN statistics, scales and biases (so every BN
matters and folding is not the identity), saves each as ``<name>.h5`` and ``<name>.keras``
and writes ``<name>.npz`` (``x``: 3 random inputs, ``y``: Keras' inference outputs).  For
every recipe and every committed fixture file, ``counts.json`` gets Keras' own numbers:
``model.count_params()`` and the trainable / non-trainable weight totals.  ``mobilenet_like``
is a MobileNetV2-like model (DepthwiseConv2D, SeparableConv2D, ReLU6, ZeroPadding2D).
``predict`` reads ``{FILE: X.npz, ...}`` from JOB.json, loads each FILE (e.g. one bnkit
wrote) with tf_keras and writes its inference outputs on ``x`` of X.npz to ``FILE.out.npy``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import import_keras  # noqa: E402

_, keras = import_keras("tf_keras")

L = keras.layers


def residual() -> Any:
    """BN folding every way: into the previous conv/dense, into the next 1x1 conv, and kept."""
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem/bn")(x)  # a tf_keras application-style name
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(8, 3, padding="same", name="res_conv")(x)
    y = L.BatchNormalization(name="res_bn")(y)
    y = L.Activation("relu", name="res_relu")(y)
    s = L.Add(name="add")([x, y])
    p = L.Conv2D(8, 1, name="proj")(L.BatchNormalization(name="pre_bn")(s))
    c = L.BatchNormalization(name="cat_bn")(L.Concatenate(name="concat")([s, p]))
    h = L.Add(name="pools")([L.MaxPooling2D(2, name="maxpool")(c), L.AveragePooling2D(2, name="avgpool")(c)])
    d = L.Dense(10, name="fc")(L.GlobalAveragePooling2D(name="gap")(h))
    out = L.Softmax(name="probs")(L.BatchNormalization(name="fc_bn")(d))
    return keras.Model(inp, out, name="residual")


def mobilenet_like() -> Any:
    """A MobileNetV2 stem and inverted residual block at 32x32, plus a separable conv."""
    inp = keras.Input((32, 32, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x)
    x = L.ReLU(6.0, name="dw1_relu")(L.BatchNormalization(name="dw1_bn")(x))
    x = L.BatchNormalization(name="pw1_bn")(L.Conv2D(16, 1, use_bias=False, name="pw1")(x))
    e = L.ReLU(6.0, name="expand_relu")(L.BatchNormalization(name="expand_bn")(
        L.Conv2D(32, 1, use_bias=False, name="expand")(x)))
    e = L.ZeroPadding2D(((0, 1), (0, 1)), name="dw2_pad")(e)
    e = L.DepthwiseConv2D(3, strides=2, use_bias=False, name="dw2")(e)
    e = L.ReLU(6.0, name="dw2_relu")(L.BatchNormalization(name="dw2_bn")(e))
    e = L.BatchNormalization(name="project_bn")(L.Conv2D(16, 1, use_bias=False, name="project")(e))
    s = L.Add(name="add")([e, L.AveragePooling2D(2, name="skip_pool")(x)])
    s = L.SeparableConv2D(24, 3, padding="same", name="sep")(s)
    s = L.ReLU(6.0, name="sep_relu")(L.BatchNormalization(name="sep_bn")(s))
    out = L.Dense(10, name="logits")(L.GlobalAveragePooling2D(name="gap")(s))
    return keras.Model(inp, out, name="mobilenet_like")


def se_ops() -> Any:
    """EfficientNet-style operations: Rescaling, Normalization, swish, a squeeze-excite block
    (Reshape, Multiply), tf.math operations (TFOpLambda) and LayerNormalization."""
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Rescaling(1.0 / 4.0, offset=-0.5, name="rescale")(inp)
    x = L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5], name="normalize")(x)
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = L.Activation("swish", name="stem_swish")(L.BatchNormalization(name="stem_bn")(x))
    s = L.Reshape((1, 1, 8), name="se_reshape")(L.GlobalAveragePooling2D(name="se_squeeze")(x))
    s = L.Conv2D(2, 1, activation="swish", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="se_excite")([x, s])
    x = L.BatchNormalization(name="head_bn")(L.Conv2D(8, 1, use_bias=False, name="head")(x))
    x = keras.activations.relu(x * 0.5 + 1.0)  # tf.math operations: TFOpLambda layers
    x = L.LayerNormalization(name="norm")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="se_ops")


def text_lstm() -> Any:
    """A text classifier: int32 token ids, Embedding, LSTM returning sequences, BN, GRU, Dense."""
    inp = keras.Input((10,), name="tokens", dtype="int32")
    x = L.Embedding(40, 8, name="embed")(inp)
    x = L.BatchNormalization(name="seq_bn")(L.LSTM(6, return_sequences=True, name="lstm")(x))
    x = L.BatchNormalization(name="gru_bn")(L.GRU(5, name="gru")(x))
    return keras.Model(inp, L.Dense(3, name="logits")(x), name="text_lstm")


def mobilenet_v2() -> Any:
    """Keras' own MobileNetV2 (alpha 0.35, 32x32, 10 classes): 52 BNs, ZeroPadding2D, ReLU6."""
    return keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)


RECIPES = {"residual": residual, "mobilenet_like": mobilenet_like, "se_ops": se_ops, "text_lstm": text_lstm,
           "mobilenet_v2": mobilenet_v2}


def randomize(model: Any, rng: np.random.Generator) -> None:
    for weight in model.weights:
        shape, name = tuple(weight.shape), weight.name
        if "moving_variance" in name:
            weight.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif "gamma" in name:
            weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif any(k in name for k in ("beta", "moving_mean", "bias")):
            weight.assign(rng.normal(0.0, 0.3, shape).astype("float32"))


def counts(model: Any) -> dict[str, int]:
    return {"total": int(model.count_params()),
            "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "non_trainable": int(sum(np.prod(w.shape) for w in model.non_trainable_weights))}


def predict(job: Path) -> None:
    for path, x_file in json.loads(job.read_text(encoding="utf-8")).items():
        model = keras.models.load_model(path, compile=False)
        np.save(f"{path}.out.npy", np.asarray(model(np.load(x_file)["x"], training=False)))


def build(work: Path, fixtures: list[str]) -> None:
    found: dict[str, dict[str, int]] = {}
    for name, recipe in RECIPES.items():
        keras.utils.set_random_seed(7)
        model = recipe()
        rng = np.random.default_rng(11)
        randomize(model, rng)
        shape = (3, *model.input_shape[1:])
        x = rng.integers(0, 40, shape).astype("int32") if name == "text_lstm" else \
            rng.normal(0.0, 1.0, shape).astype("float32")
        model.save(str(work / f"{name}.h5"))
        model.save(str(work / f"{name}.keras"))
        np.savez(work / f"{name}.npz", x=x, y=np.asarray(model(x, training=False)))
        found[name] = counts(model)
    for path in fixtures:
        found[Path(path).name] = counts(keras.models.load_model(path, compile=False))
    (work / "counts.json").write_text(json.dumps(found), encoding="utf-8")


def main() -> int:
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), sys.argv[3:])
    else:
        predict(Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
