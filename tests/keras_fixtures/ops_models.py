"""Keras side of ``tests/test_keras_ops.py``: build, save and run small models of the
shape/arithmetic/normalisation/activation/operation layers, in tf_keras or Keras 3.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python ops_models.py {tf_keras|keras3} build WORKDIR
    python ops_models.py {tf_keras|keras3} predict WORKDIR NAME...

``build`` writes, per model, ``<name>.h5``, ``<name>.keras`` and ``<name>_ref.npz`` (inputs
``x0``, ``x1``..., outputs ``y0``...), and ``built.json`` mapping model names to "ok" or the
error.  Every weight is random (variances positive) so nothing is an identity.  ``predict``
loads ``<name>`` (a file bnkit wrote) and writes ``<name>_pred.npz`` with its outputs on the
inputs of the model it came from (``<stem>_ref.npz``, ``stem`` = name up to the first '~').
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import failure, import_keras  # noqa: E402

FLAVOUR = sys.argv[1]
tf, keras = import_keras(FLAVOUR)

if FLAVOUR == "tf_keras":
    from tf_keras.src.applications.convnext import LayerScale  # noqa: E402
    from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer  # noqa: E402
else:
    from keras.src.applications.convnext import LayerScale  # noqa: E402
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer  # noqa: E402

L = keras.layers
K3 = FLAVOUR == "keras3"
TF_NAMES = ["elu", "exponential", "gelu", "hard_sigmoid", "linear", "mish", "relu", "selu", "sigmoid", "softmax",
            "softplus", "softsign", "swish", "tanh", "relu6", "silu", "leaky_relu", "log_softmax"]
K3_NAMES = ["celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
            "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu",
            "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid",
            "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink"]


def activations() -> Any:
    """Every built-in activation name, as Activation layers and as Dense(activation=...)."""
    inp = keras.Input((7,), name="x")
    h = L.Dense(7, name="pre")(inp)
    outs = []
    for name in (K3_NAMES if K3 else TF_NAMES):
        outs.append(L.Activation(name, name=f"act_{name}")(h))
        outs.append(L.Dense(5, activation=name, name=f"dense_{name}")(h))
    return keras.Model(inp, L.Concatenate(name="all")(outs), name="activations")


def preprocessing() -> Any:
    inp = keras.Input((6, 5, 3), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    x = L.Normalization(axis=-1, mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1.5], name="norm_const")(x)
    x = L.Conv2D(4, 3, padding="same", name="conv")(x)
    x = L.Rescaling([0.5, 1.0, 2.0, -1.0], offset=[0.0, 0.1, 0.2, 0.3], name="rescale_channels")(x)
    x = L.Normalization(axis=-1, name="norm_adapted")(x)
    x = L.Normalization(axis=[1, 3], invert=True, name="norm_invert")(x)
    x = L.Normalization(axis=None, mean=0.5, variance=4.0, name="norm_scalar")(x)
    x = L.Rescaling(2.0, name="rescale_scalar")(x)
    return keras.Model(inp, x, name="preprocessing")


def normalisation() -> Any:
    inp = keras.Input((5, 6, 4), name="image")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)  # runs NCHW inside: the LNs see a moved layout
    a = L.LayerNormalization(name="ln_last")(x)
    b = L.LayerNormalization(axis=[1, 2], epsilon=1e-5, name="ln_spatial")(x)
    c = L.LayerNormalization(axis=-1, center=False, name="ln_nocenter")(x)
    d = L.LayerNormalization(axis=[1, 2, 3], scale=False, name="ln_noscale")(x)
    e = L.LayerNormalization(axis=[3, 1], name="ln_unsorted")(x)
    extra = [L.LayerNormalization(rms_scaling=True, name="ln_rms")(x)] if K3 else []
    return keras.Model(inp, L.Concatenate(name="cat")([a, b, c, d, e, *extra]), name="normalisation")


def activation_layers() -> Any:
    inp = keras.Input((4, 5, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", name="conv")(inp)
    slope = {"negative_slope": 0.15} if K3 else {"alpha": 0.15}
    outs = [L.LeakyReLU(**slope, name="leaky")(x), L.LeakyReLU(name="leaky_default")(x),
            L.PReLU(name="prelu")(x), L.PReLU(shared_axes=[1, 2], name="prelu_shared")(x),
            L.ELU(alpha=0.5, name="elu")(x), L.Softmax(axis=1, name="softmax_h")(x),
            L.Softmax(axis=[1, 2], name="softmax_hw")(x), L.Softmax(name="softmax_c")(x),
            L.ReLU(max_value=0.8, negative_slope=0.1, threshold=0.2, name="relu")(x)]
    if not K3:
        outs.append(L.ThresholdedReLU(theta=0.3, name="thresholded")(x))
    return keras.Model(inp, L.Concatenate(name="cat")(outs), name="activation_layers")


def merges_and_shapes() -> Any:
    a_in = keras.Input((4, 6), name="a")
    b_in = keras.Input((1, 6), name="b")
    c = L.Dense(6, name="proj")(a_in)
    outs = [L.Multiply(name="mul")([a_in, b_in, c]), L.Subtract(name="sub")([a_in, b_in]),
            L.Average(name="avg")([a_in, c]), L.Maximum(name="max")([a_in, b_in, c]),
            L.Minimum(name="min")([c, b_in])]
    x = L.Concatenate(axis=1, name="cat")(outs)  # (20, 6)
    x = L.Permute((2, 1), name="perm")(x)  # (6, 20)
    x = L.Reshape((5, -1), name="reshape")(x)  # (5, 24)
    x = L.Dense(3, name="dense")(x)
    flat = L.Reshape((-1,), name="flat")(x)  # (15,)
    rep = L.RepeatVector(2, name="repeat")(flat)  # (2, 15)
    img = L.Reshape((3, 5, 2), name="to_image")(L.Permute((2, 1), name="perm2")(rep))
    img = L.Conv2D(2, 2, name="conv")(img)
    img = L.Permute((3, 1, 2), name="perm3")(img)
    return keras.Model([a_in, b_in], [L.Flatten(name="out_flat")(img), x], name="merges_and_shapes")


def regularisation() -> Any:
    inp = keras.Input((6, 4), name="seq")
    x = L.SpatialDropout1D(0.3, name="sd1")(inp)
    x = L.GaussianNoise(0.5, name="gn")(x)
    x = L.GaussianDropout(0.3, name="gd")(x)
    x = L.AlphaDropout(0.2, name="ad")(x)
    x = L.ActivityRegularization(l1=0.01, l2=0.02, name="ar")(x)
    x = L.Reshape((3, 2, 4), name="img")(x)
    x = L.SpatialDropout2D(0.4, name="sd2")(x)
    x = L.Reshape((3, 2, 2, 2), name="vol")(x)
    x = L.SpatialDropout3D(0.4, name="sd3")(x)
    return keras.Model(inp, L.Dense(3, name="out")(L.Flatten(name="flat")(x)), name="regularisation")


def application_layers() -> Any:
    inp = keras.Input((4, 4, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    y = L.Conv2D(8, 1, name="branch")(x)
    x = CustomScaleLayer(0.17, name="scale_add")([x, y])
    x = LayerScale(1e-6, 8, name="layer_scale")(x)
    return keras.Model(inp, L.LayerNormalization(epsilon=1e-6, name="ln")(x), name="application_layers")


def operations() -> Any:
    """tf_keras: TFOpLambda / SlicingOpLambda layers; Keras 3: operation layers, with constants."""
    a_in = keras.Input((4, 6), name="a")
    b_in = keras.Input((4, 6), name="b")
    ops = tf if not K3 else keras.ops
    h = L.ReLU(6.0, name="relu_six")(a_in + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard_sigmoid
    h = 2.0 - h * b_in
    h = h / 3.0 + ops.mean(h, axis=1, keepdims=True) if K3 else \
        h / 3.0 + tf.math.reduce_mean(h, axis=[1], keepdims=True)
    h = ops.maximum(h, -0.25)
    h = (ops.nn.relu6(h) if not K3 else ops.relu6(h)) - a_in
    h = ops.reshape(h, (-1, 6, 4))
    h = ops.transpose(h, (0, 2, 1)) if K3 else tf.transpose(h, perm=[0, 2, 1])
    s = ops.sum(h, axis=-1) if K3 else tf.math.reduce_sum(h, axis=-1)
    h = -(h * b_in) + ops.square(h)
    h = ops.nn.softmax(h, axis=1) if not K3 else ops.softmax(h, axis=1)
    outs = [h, s]
    if not K3:
        outs.append(a_in[:, 1:3, ::2])
    else:
        outs.append(ops.hard_sigmoid(a_in) + ops.gelu(b_in) + ops.leaky_relu(a_in, 0.3))
    return keras.Model([a_in, b_in], outs, name="operations")


MODELS = [activations, preprocessing, normalisation, activation_layers, merges_and_shapes, regularisation,
          application_layers, operations]


def randomize(model: Any, rng: np.random.Generator) -> None:
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            name = getattr(weight, "path", weight.name)
            shape = tuple(weight.shape)
            if "count" in name:
                values.append(np.asarray(1000, dtype=weight.dtype.name if hasattr(weight.dtype, "name") else "int64"))
            elif "variance" in name:
                values.append(rng.uniform(0.3, 3.0, shape).astype("float32"))
            else:
                values.append(rng.normal(0, 0.7, shape).astype("float32"))
        if values:
            layer.set_weights(values)
            if hasattr(layer, "finalize_state"):  # Keras 3 Normalization caches mean/variance at build
                layer.finalize_state()


def inputs(model: Any, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(0, 1.5, (3, *tuple(t.shape)[1:])).astype("float32") for t in model.inputs]


def build(work: Path) -> None:
    status = {}
    for index, recipe in enumerate(MODELS):
        name = recipe.__name__
        try:
            rng = np.random.default_rng(100 + index)
            model = recipe()
            randomize(model, rng)
            xs = inputs(model, rng)
            ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
            ys = ys if isinstance(ys, list) else [ys]
            model.save(work / f"{name}.h5")
            model.save(work / f"{name}.keras")
            np.savez(work / f"{name}_ref.npz", **{f"x{i}": x for i, x in enumerate(xs)},
                     **{f"y{i}": np.asarray(y) for i, y in enumerate(ys)})
            status[name] = "ok"
        except Exception as error:  # reported to the test, which fails with it
            status[name] = failure(error)
    (work / "built.json").write_text(json.dumps(status), encoding="utf-8")


def predict(work: Path, names: list[str]) -> None:
    status = {}
    for name in names:
        try:
            # Keras 3 finds the application layers of a .keras file by their module; tf_keras, and
            # Keras 3 with legacy .h5 (no modules there), need them named, even for their own files.
            known = {} if K3 and name.endswith(".keras") else {"LayerScale": LayerScale,
                                                               "CustomScaleLayer": CustomScaleLayer}
            model = keras.models.load_model(work / name, compile=False, custom_objects=known)
            ref = np.load(work / f"{name.split('~')[0]}_ref.npz")
            xs = [ref[f"x{i}"] for i in range(len(model.inputs))]
            ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
            ys = ys if isinstance(ys, list) else [ys]
            np.savez(work / f"{name}_pred.npz", **{f"y{i}": np.asarray(y) for i, y in enumerate(ys)})
            status[name] = "ok"
        except Exception as error:
            status[name] = f"{type(error).__name__}: {error}"
    (work / "predicted.json").write_text(json.dumps(status), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[2] == "build":
        build(Path(sys.argv[3]))
    else:
        predict(Path(sys.argv[3]), sys.argv[4:])
