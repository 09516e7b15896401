"""Keras side of bnkit's MultiHeadAttention tests: build the models of :data:`MODELS`.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python attention_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}``; ``results_<flavour>_<job>.json`` in
``workdir`` maps task name -> ``"ok"`` or ``"Type: message"``.

* ``{"kind": "build", "name", "model"}``: the functional model ``MODELS[model]`` with seeded
  random weights (normal, std 0.3; BN variances uniform in [0.5, 2]), saved as
  ``<name>.h5`` and ``<name>.keras``; ``<name>_ref.npz`` holds its inputs ``x0``, ``x1``...,
  its inference output ``y`` and ``counts`` (count_params, trainable, non-trainable).
* ``{"kind": "predict", "name", "file", "ref"}``: ``load_model(file)``, inference on the
  inputs of npz ``ref`` -> ``<name>_pred.npz`` (``y``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import flavour_argument, import_keras, predictor, run_job  # noqa: E402

FLAVOUR = flavour_argument()
_, keras = import_keras(FLAVOUR, onednn="0")

L = keras.layers
RNG = np.random.default_rng(11)


def _floats(*shape: int) -> np.ndarray:
    return RNG.normal(0.0, 1.0, (4, *shape)).astype(np.float32)


def _mask(t: int, s: int) -> np.ndarray:
    mask = (RNG.uniform(size=(4, t, s)) > 0.4).astype(np.float32)
    mask[:, :, 0] = 1.0  # most rows keep a key...
    mask[1, 2] = 0.0  # ...one row keeps none
    return mask


def self_block() -> tuple[Any, list[np.ndarray]]:
    x = keras.Input((6, 8), name="x")
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    y = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, att]))
    return keras.Model(x, L.Dense(8)(y)), [_floats(6, 8)]


def cross_no_key() -> tuple[Any, list[np.ndarray]]:
    q, v = keras.Input((5, 8), name="q"), keras.Input((7, 6), name="v")
    return keras.Model([q, v], L.MultiHeadAttention(2, 3, name="cross")(q, v)), [_floats(5, 8), _floats(7, 6)]


def cross_key_dims() -> tuple[Any, list[np.ndarray]]:
    q, v, k = keras.Input((5, 8), name="q"), keras.Input((7, 6), name="v"), keras.Input((7, 4), name="k")
    att = L.MultiHeadAttention(3, 2, value_dim=5, output_shape=(2, 3), name="cross")(q, v, key=k)
    return keras.Model([q, v, k], L.Flatten()(att)), [_floats(5, 8), _floats(7, 6), _floats(7, 4)]


def name_clash() -> tuple[Any, list[np.ndarray]]:
    """Layers named like the attention's projections (``.h5`` names ``mha/value/kernel:0``)."""
    x = keras.Input((6, 5), name="x")
    v = L.Dense(5, name="value")(x)
    att = L.MultiHeadAttention(2, 3, name="mha")(L.Dense(5, name="query")(x), v)
    return keras.Model(x, L.Dense(2, name="attention_output")(att)), [_floats(6, 5)]


def no_bias_dropout() -> tuple[Any, list[np.ndarray]]:
    x = keras.Input((6, 5), name="x")
    att = L.MultiHeadAttention(3, 4, value_dim=2, use_bias=False, dropout=0.3, output_shape=7, name="mha")(x, x)
    return keras.Model(x, att), [_floats(6, 5)]


def text_classifier() -> tuple[Any, list[np.ndarray]]:
    """The Keras "text classification with transformer" example, positions as a second input."""
    tokens, positions = keras.Input((8,), dtype="int32", name="tokens"), keras.Input((8,), dtype="int32", name="pos")
    x = L.Add()([L.Embedding(20, 16)(tokens), L.Embedding(8, 16)(positions)])
    att = L.Dropout(0.1)(L.MultiHeadAttention(num_heads=2, key_dim=16, name="mha")(x, x))
    x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, att]))
    ffn = L.Dense(16)(L.Dense(32, activation="relu")(x))
    x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, L.Dropout(0.1)(ffn)]))
    x = L.BatchNormalization()(L.Dense(20)(L.GlobalAveragePooling1D()(x)))
    y = L.Dense(2, activation="softmax")(L.Activation("relu")(x))
    ids = RNG.integers(0, 20, (4, 8)).astype(np.int32)
    return keras.Model([tokens, positions], y), [ids, np.tile(np.arange(8, dtype=np.int32), (4, 1))]


def tiny_vit() -> tuple[Any, list[np.ndarray]]:
    image = keras.Input((8, 8, 3), name="image")
    patches = L.BatchNormalization()(L.Conv2D(12, 4, strides=4)(image))
    x = L.Reshape((4, 12))(patches)
    x = L.LayerNormalization()(L.Add()([x, L.MultiHeadAttention(3, 4, name="mha")(x, x)]))
    return keras.Model(image, L.Dense(3)(L.GlobalAveragePooling1D()(x))), [_floats(8, 8, 3)]


def causal() -> tuple[Any, list[np.ndarray]]:
    x = keras.Input((6, 8), name="x")
    att = L.MultiHeadAttention(2, 4, name="mha")(x, x, use_causal_mask=True)
    return keras.Model(x, L.Dense(4)(att)), [_floats(6, 8)]


def attention_mask() -> tuple[Any, list[np.ndarray]]:
    q, v, m = keras.Input((5, 8), name="q"), keras.Input((7, 8), name="v"), keras.Input((5, 7), name="m")
    att = L.MultiHeadAttention(2, 4, name="mha")(q, v, attention_mask=m)
    return keras.Model([q, v, m], att), [_floats(5, 8), _floats(7, 8), _mask(5, 7)]


def mask_causal_dropout() -> tuple[Any, list[np.ndarray]]:
    x, m = keras.Input((6, 8), name="x"), keras.Input((6, 6), name="m")
    att = L.MultiHeadAttention(2, 4, dropout=0.2, name="mha")(x, x, attention_mask=m, use_causal_mask=True)
    mask = _mask(6, 6)
    mask[2, 3, :4] = 0.0  # with the causal mask: no key left for this row
    return keras.Model([x, m], att), [_floats(6, 8), mask]


def robust_mask() -> tuple[Any, list[np.ndarray]]:
    """tf_keras only: ``softmax_robust_masking`` keeps mask values above 0.5 (0.7 keeps; without it, 0.7 masks)."""
    q, v, m = keras.Input((5, 8), name="q"), keras.Input((7, 8), name="v"), keras.Input((5, 7), name="m")
    att = L.MultiHeadAttention(2, 4, softmax_robust_masking=True, name="mha")(q, v, attention_mask=m)
    mask = _mask(5, 7)
    mask[0, :, 1:3] = 0.7
    return keras.Model([q, v, m], att), [_floats(5, 8), _floats(7, 8), mask]


def sliding_window() -> tuple[Any, list[np.ndarray]]:
    """Keras 3 only: keys less than ``sliding_window`` steps away, here with the causal mask."""
    q, v = keras.Input((9, 8), name="q"), keras.Input((6, 8), name="v")
    att = L.MultiHeadAttention(2, 4, sliding_window=2, name="mha")(q, v, use_causal_mask=True)
    return keras.Model([q, v], att), [_floats(9, 8), _floats(6, 8)]


def gated() -> tuple[Any, list[np.ndarray]]:
    """Keras 3 only: ``use_gate=True``, with a key of its own and without biases."""
    q, v, k = keras.Input((5, 8), name="q"), keras.Input((7, 6), name="v"), keras.Input((7, 4), name="k")
    gated_ = L.MultiHeadAttention(2, 3, value_dim=4, use_gate=True, name="mha")(q, v, key=k)
    plain = L.MultiHeadAttention(2, 3, use_gate=True, use_bias=False, dropout=0.1, name="mha2")(gated_, gated_)
    return keras.Model([q, v, k], plain), [_floats(5, 8), _floats(7, 6), _floats(7, 4)]


def axes_2d() -> tuple[Any, list[np.ndarray]]:
    x = keras.Input((3, 4, 6), name="x")
    both = L.MultiHeadAttention(2, 3, name="mha")(x, x)  # default: attends over (1, 2)
    rows = L.MultiHeadAttention(2, 3, attention_axes=(2,), name="mha_rows")(both, x)
    return keras.Model(x, rows), [_floats(3, 4, 6)]


def refused_mask_zero() -> tuple[Any, list[np.ndarray]]:
    ids = keras.Input((6,), dtype="int32", name="ids")
    x = L.Embedding(10, 8, mask_zero=True)(ids)
    return keras.Model(ids, L.MultiHeadAttention(2, 4, name="mha")(x, x)), [RNG.integers(0, 10, (4, 6))]


def refused_scores() -> tuple[Any, list[np.ndarray]]:
    x = keras.Input((6, 8), name="x")
    out, scores = L.MultiHeadAttention(2, 4, name="mha")(x, x, return_attention_scores=True)
    return keras.Model(x, [out, scores]), [_floats(6, 8)]


MODELS: dict[str, Callable[[], tuple[Any, list[np.ndarray]]]] = {
    fn.__name__: fn for fn in (self_block, cross_no_key, cross_key_dims, name_clash, no_bias_dropout, text_classifier,
                               tiny_vit, causal, attention_mask, mask_causal_dropout, robust_mask, sliding_window,
                               gated, axes_2d, refused_mask_zero, refused_scores)}


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model, xs = MODELS[task["model"]]()
    rng = np.random.default_rng(7)
    for weight in model.weights:
        shape = tuple(weight.shape)
        name = weight.path if hasattr(weight, "path") else weight.name
        value = rng.uniform(0.5, 2.0, shape) if "variance" in name else rng.normal(0.0, 0.3, shape)
        weight.assign(value.astype("float32"))
    out = model([*xs] if len(xs) > 1 else xs[0], training=False)
    y = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
    model.save(str(work / f"{task['name']}.h5"))
    model.save(str(work / f"{task['name']}.keras"))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    counts = np.array([model.count_params(), trainable, model.count_params() - trainable])
    np.savez(work / f"{task['name']}_ref.npz", y=y, counts=counts, **{f"x{i}": x for i, x in enumerate(xs)})


TASKS = {"build": build, "predict": predictor(
        keras, lambda model, xs: model(xs if len(xs) > 1 else xs[0], training=False))}


if __name__ == "__main__":
    raise SystemExit(run_job(TASKS))
