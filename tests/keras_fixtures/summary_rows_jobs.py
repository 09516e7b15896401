"""Keras side of ``tests/test_keras_summary_rows.py``: what Keras lists per layer.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python tests/keras_fixtures/summary_rows_jobs.py FLAVOUR WORKDIR

For each recipe below, FLAVOUR (``tf_keras`` or ``keras3``) builds the model, saves it as
``WORKDIR/<recipe>.keras`` with ``<recipe>.npz`` (``x0``, ``x1``...: two samples per model
input) and writes
``<recipe>.json``: the model's name and, for every layer of ``model.layers`` (the rows of
Keras' ``model.summary()``), its name, class, output shape (tf_keras' ``output_shape``; in
Keras 3, which has no such attribute on every layer, the shapes of ``layer.output``) and
``count_params()``, plus the text of ``model.summary()``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import flavour_argument, import_keras  # noqa: E402

FLAVOUR = flavour_argument()
_, keras = import_keras(FLAVOUR)
L = keras.layers


def text_conv() -> Any:
    """Embedding -> LSTM (sequences) -> Conv1D 'same' -> Dense: Conv1D runs on (N, C, L) in torch."""
    return keras.Sequential([keras.Input((6,), dtype="int32"), L.Embedding(20, 8, name="embedding"),
                             L.LSTM(5, return_sequences=True, name="lstm"),
                             L.Conv1D(4, 3, padding="same", name="conv1d"), L.Dense(3, name="dense")],
                            name="text_conv")


def cnn_bn() -> Any:
    """A small channels-last CNN with BN: Keras counts the moving statistics as parameters."""
    return keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(8, 3, name="conv2d"),
                             L.BatchNormalization(name="batch_normalization"), L.ReLU(name="re_lu"),
                             L.MaxPooling2D(2, name="max_pooling2d"), L.Flatten(name="flatten"),
                             L.Dense(5, activation="softmax", name="dense")], name="cnn_bn")


def residual() -> Any:
    """A functional residual block: InputLayer rows, a shortcut, Add."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("relu", name="relu")(x)
    s = L.Conv2D(4, 1, name="shortcut")(inp)
    x = L.Add(name="add")([x, s])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="probs")(x), name="residual")


def nested() -> Any:
    """A nested Sequential inside a functional model: one row for the nested model."""
    block = keras.Sequential([keras.Input((8,)), L.Dense(6, name="inner_dense"),
                              L.BatchNormalization(name="inner_bn"), L.Dense(4, activation="relu", name="inner_out")],
                             name="block")
    inp = keras.Input((10,), name="features")
    x = L.Dense(8, activation="relu", name="stem")(inp)
    return keras.Model(inp, L.Dense(2, name="head")(block(x)), name="nested")


def bilstm() -> Any:
    """A text classifier: masked Embedding -> Bidirectional LSTM -> Dense."""
    inp = keras.Input((7,), dtype="int32", name="tokens")
    x = L.Embedding(30, 8, mask_zero=True, name="embed")(inp)
    x = L.Bidirectional(L.LSTM(6, name="lstm"), name="bidirectional")(x)
    return keras.Model(inp, L.Dense(2, activation="softmax", name="out")(x), name="bilstm")


def deep_shared() -> Any:
    """Models nested two deep (inner names clashing with outer ones), a nested model called on
    two inputs, a conv shared by both branches."""
    inner = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(3, 1, name="conv"), L.BatchNormalization(name="bn")],
                             name="inner")
    inp = keras.Input((6, 6, 3), name="x")
    tower = keras.Model(inp, L.ReLU(name="tower_relu")(inner(inp)), name="tower")
    left, right = keras.Input((6, 6, 3), name="left"), keras.Input((6, 6, 3), name="right")
    conv = L.Conv2D(3, 3, padding="same", name="conv")  # the name of a layer inside `inner`
    a, b = conv(tower(left)), conv(tower(right))
    h = L.Concatenate(name="cat")([L.GlobalAveragePooling2D(name="gap_a")(a), L.GlobalMaxPooling2D(name="gap_b")(b)])
    return keras.Model([left, right], L.Dense(2, name="out")(h), name="deep_shared")


RECIPES = {"text_conv": text_conv, "cnn_bn": cnn_bn, "residual": residual, "nested": nested, "bilstm": bilstm,
           "deep_shared": deep_shared}


def _shape(layer: Any) -> Any:
    """The layer's output shape as lists (None for unknown sizes), as the flavour reports it;
    ``"multiple"`` for a layer called several times when Keras gives no single shape."""
    try:
        if FLAVOUR == "tf_keras":
            shape = layer.output_shape
        else:
            out = layer.output
            shape = [tuple(t.shape) for t in out] if isinstance(out, (list, tuple)) else tuple(out.shape)
    except (AttributeError, ValueError, RuntimeError):
        return "multiple"
    return [list(s) for s in shape] if isinstance(shape, list) else list(shape)


def _inputs(model: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two samples per model input, as ``x0``, ``x1``..."""
    arrays = {}
    for index, spec in enumerate(model.inputs):
        shape = (2, *spec.shape[1:])
        arrays[f"x{index}"] = rng.integers(1, 20, size=shape).astype(np.int64) if "int" in str(spec.dtype) \
            else rng.standard_normal(shape).astype(np.float32)
    return arrays


def main(workdir: Path) -> None:
    rng = np.random.default_rng(5)
    for name, recipe in RECIPES.items():
        keras.backend.clear_session()
        model = recipe()
        model.save(workdir / f"{name}.keras")
        np.savez(workdir / f"{name}.npz", **_inputs(model, rng))
        lines: list[str] = []
        model.summary(print_fn=lambda line, *_, **__: lines.append(line))
        rows = [{"name": layer.name, "class": type(layer).__name__, "output_shape": _shape(layer),
                 "params": int(layer.count_params())} for layer in model.layers]
        record = {"model": model.name, "rows": rows, "summary": "\n".join(lines)}
        (workdir / f"{name}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[2]))
