"""Keras side of bnkit's sequence-mask tests around MultiHeadAttention: build :data:`MODELS`.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python masked_attention_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}`` (see :mod:`_flavour`).

* ``{"kind": "build", "name", "model"}``: the functional model ``MODELS[model]`` with seeded
  random weights (normal, std 0.3; BN variances uniform in [0.5, 2]), saved as
  ``<name>.h5`` and ``<name>.keras``; ``<name>_ref.npz`` holds its inputs ``x0``, ``x1``...,
  its inference output ``y`` (the model as built), ``y_h5`` and ``y_keras`` (Keras reloading
  each file, where it can) and ``counts`` (count_params, trainable, non-trainable).
* ``{"kind": "predict", "name", "file", "ref"}``: ``load_model(file)``, inference on the
  inputs of npz ``ref`` -> ``<name>_pred.npz`` (``y``).

Token batches are padded with 0 (the masked id): rows with trailing zeros, leading zeros,
zeros inside, none, and one row of padding only (a masked mean over no step: NaN in Keras).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import _flavour

FLAVOUR = _flavour.flavour_argument()
tf, keras = _flavour.import_keras(FLAVOUR, onednn="0")
L = keras.layers
T, D, VOCAB = 7, 8, 20


def _tokens() -> np.ndarray:
    rng = np.random.default_rng(5)
    ids = rng.integers(1, VOCAB, (5, T)).astype(np.int32)
    ids[0, 4:] = 0  # trailing padding
    ids[1, :3] = 0  # leading padding
    ids[2, 2] = 0  # a hole
    ids[4] = 0  # padding only
    return ids


def _positions() -> np.ndarray:
    return np.tile(np.arange(T, dtype=np.int32), (5, 1))


def _floats(*shape: int) -> np.ndarray:
    return np.random.default_rng(6).normal(0.0, 1.0, (5, *shape)).astype(np.float32)


def _block(x: Any, dropout: float = 0.0) -> Any:
    """A transformer encoder block as users write it."""
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=dropout, name="mha")(x, x)
    x = L.LayerNormalization(epsilon=1e-6, name="ln1")(L.Add(name="res1")([x, L.Dropout(0.1, name="drop")(att)]))
    ff = L.Dense(D, name="ff2")(L.Dense(16, activation="relu", name="ff1")(x))
    return L.LayerNormalization(epsilon=1e-6, name="ln2")(L.Add(name="res2")([x, ff]))


def transformer() -> tuple[Any, list[np.ndarray]]:
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    x = _block(L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens))
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(x))
    return keras.Model(tokens, out), [_tokens()]


def transformer_positions() -> tuple[Any, list[np.ndarray]]:
    """Token + position embeddings: tf_keras keeps the tokens' mask through Add (an input
    without one is ignored), Keras 3 drops it (an input without one)."""
    tokens, positions = keras.Input((T,), dtype="int32", name="tokens"), keras.Input((T,), dtype="int32", name="pos")
    x = L.Add(name="embed")([L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens),
                             L.Embedding(T, D, name="pos_emb")(positions)])
    out = L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(_block(x, dropout=0.1)))
    return keras.Model([tokens, positions], out), [_tokens(), _positions()]


def mha_gap() -> tuple[Any, list[np.ndarray]]:
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    x = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(x, x)
    x = L.BatchNormalization(name="bn")(L.Activation("tanh", name="act")(att))
    return keras.Model(tokens, L.GlobalAveragePooling1D(name="gap")(x)), [_tokens()]


def cross_masked_value() -> tuple[Any, list[np.ndarray]]:
    """An unmasked query attending to a masked value: the keys' padding is left out."""
    query, tokens = keras.Input((5, 6), name="query"), keras.Input((T,), dtype="int32", name="tokens")
    value = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="cross")(query, value)
    return keras.Model([query, tokens], L.Dense(4, name="out")(att)), [_floats(5, 6), _tokens()]


def cross_masked_key() -> tuple[Any, list[np.ndarray]]:
    """A masked key (its padding left out) with an unmasked value and query."""
    query, value = keras.Input((5, 6), name="query"), keras.Input((T, 5), name="value")
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    key = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="cross")(query, value, key=key)
    return keras.Model([query, value, tokens], att), [_floats(5, 6), _floats(T, 5), _tokens()]


def cross_masked_query() -> tuple[Any, list[np.ndarray]]:
    """A masked query (Masking on zero steps) and an unmasked value; the output carries the
    query's mask into the pooling."""
    steps = _floats(T, 6)
    steps[0, 5:] = 0.0
    steps[1, :2] = 0.0
    steps[4] = 0.0
    query, value = keras.Input((T, 6), name="query"), keras.Input((4, 5), name="value")
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="cross")(L.Masking(0.0, name="masking")(query), value)
    return keras.Model([query, value], L.GlobalAveragePooling1D(name="gap")(att)), [steps, _floats(4, 5)]


def masks_causal_explicit() -> tuple[Any, list[np.ndarray]]:
    """Sequence masks with the causal mask and an explicit attention_mask (dropout: Keras 3's
    unfused path, which zeroes fully masked rows)."""
    tokens, allowed = keras.Input((T,), dtype="int32", name="tokens"), keras.Input((T, T), name="allowed")
    x = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2, name="mha")(
        x, x, attention_mask=allowed, use_causal_mask=True)
    gate = (np.random.default_rng(8).uniform(size=(5, T, T)) > 0.3).astype(np.float32)
    gate[:, :, 0] = 1.0
    return keras.Model([tokens, allowed], L.Dense(3, name="out")(att)), [_tokens(), gate]


def max_pooled() -> tuple[Any, list[np.ndarray]]:
    """GlobalMaxPooling1D takes no mask (the plain max over every step)."""
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    x = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    return keras.Model(tokens, L.GlobalMaxPooling1D(name="gmp")(att)), [_tokens()]


def lstm_after_add() -> tuple[Any, list[np.ndarray]]:
    """Masked tokens + unmasked positions -> Add -> LSTM (tf_keras: masked, Keras 3: not)."""
    tokens, positions = keras.Input((T,), dtype="int32", name="tokens"), keras.Input((T,), dtype="int32", name="pos")
    x = L.Add(name="embed")([L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens),
                             L.Embedding(T, D, name="pos_emb")(positions)])
    return keras.Model([tokens, positions], L.LSTM(5, name="lstm")(x)), [_tokens(), _positions()]


def _two_masks(merge: Any) -> tuple[Any, list[np.ndarray]]:
    a, b = keras.Input((T,), dtype="int32", name="a"), keras.Input((T,), dtype="int32", name="b")
    x = merge(name="merge")([L.Embedding(VOCAB, D, mask_zero=True, name="emb_a")(a),
                             L.Embedding(VOCAB, D, mask_zero=True, name="emb_b")(b)])
    other = _tokens()[::-1].copy()
    other[3, 5:] = 0
    return keras.Model([a, b], L.GlobalAveragePooling1D(name="gap")(L.Dense(4, name="d")(x))), [_tokens(), other]


def two_masks_add() -> tuple[Any, list[np.ndarray]]:
    """Two masked embeddings added: tf_keras ANDs their masks, Keras 3 ORs them."""
    return _two_masks(L.Add)


def two_masks_multiply() -> tuple[Any, list[np.ndarray]]:
    """Two masked embeddings multiplied: tf_keras as Add; Keras 3 leaves masked steps out of
    the product (refused)."""
    return _two_masks(L.Multiply)


def subtract_average() -> tuple[Any, list[np.ndarray]]:
    """Subtract and Average of masked tensors (every input masked: both frameworks keep it)."""
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    a = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    b = L.Dense(D, name="d")(a)
    x = L.Average(name="avg")([L.Subtract(name="sub")([a, b]), a])
    return keras.Model(tokens, L.GlobalAveragePooling1D(name="gap")(x)), [_tokens()]


def maximum_minimum() -> tuple[Any, list[np.ndarray]]:
    """tf_keras' Maximum and Minimum with one masked input: the mask goes on (Keras 3: refused)."""
    tokens, positions = keras.Input((T,), dtype="int32", name="tokens"), keras.Input((T,), dtype="int32", name="pos")
    a, p = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens), L.Embedding(T, D, name="pos_emb")(positions)
    x = L.Minimum(name="min")([L.Maximum(name="max")([a, p]), p])
    return keras.Model([tokens, positions], L.GlobalAveragePooling1D(name="gap")(x)), [_tokens(), _positions()]


def sequential_gap() -> tuple[Any, list[np.ndarray]]:
    """A Sequential model: masked Embedding -> Dense -> masked mean."""
    model = keras.Sequential([keras.Input((T,), dtype="int32"), L.Embedding(VOCAB, D, mask_zero=True, name="emb"),
                              L.Dense(4, activation="relu", name="d"), L.GlobalAveragePooling1D(name="gap")])
    return model, [_tokens()]


def refused_conv() -> tuple[Any, list[np.ndarray]]:
    """The mask reaching Conv1D through the attention: refused, naming the Conv1D."""
    tokens = keras.Input((T,), dtype="int32", name="tokens")
    x = L.Embedding(VOCAB, D, mask_zero=True, name="emb")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(x, x)
    return keras.Model(tokens, L.Conv1D(2, 3, name="conv")(L.Dropout(0.1)(att))), [_tokens()]


MODELS: dict[str, Callable[[], tuple[Any, list[np.ndarray]]]] = {
    fn.__name__: fn for fn in (transformer, transformer_positions, mha_gap, cross_masked_value, cross_masked_key,
                               cross_masked_query,
                               masks_causal_explicit, max_pooled, lstm_after_add, two_masks_add, two_masks_multiply,
                               subtract_average, maximum_minimum, sequential_gap, refused_conv)}


def _run(model: Any, xs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(model(xs if len(xs) > 1 else xs[0], training=False))


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model, xs = MODELS[task["model"]]()
    rng = np.random.default_rng(7)
    for weight in model.weights:
        name = weight.path if hasattr(weight, "path") else weight.name
        shape = tuple(weight.shape)
        value = rng.uniform(0.5, 2.0, shape) if "variance" in name else rng.normal(0.0, 0.3, shape)
        weight.assign(value.astype("float32"))
    y = _run(model, xs)
    reloaded = _flavour.save_and_reload(keras, model, work / task["name"], lambda again: _run(again, xs))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    counts = np.array([model.count_params(), trainable, model.count_params() - trainable])
    np.savez(work / f"{task['name']}_ref.npz", y=y, counts=counts, **reloaded,
             **{f"x{i}": x for i, x in enumerate(xs)})


if __name__ == "__main__":
    raise SystemExit(_flavour.run_job({"build": build, "predict": _flavour.predictor(keras, _run)}))
