"""Keras side of bnkit's tests of masks made by shared layers: build :data:`MODELS`.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python shared_mask_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}`` (see :mod:`_flavour`).

* ``{"kind": "build", "name", "model"}``: the functional model ``MODELS[model]`` with seeded
  random weights (normal, std 0.3), saved as ``<name>.h5`` and ``<name>.keras``;
  ``<name>_ref.npz`` holds its inputs ``x0``, ``x1``..., its inference output ``y`` (the
  model as built) and ``y_h5``/``y_keras`` (Keras reloading each file, where it can).
* ``{"kind": "predict", "name", "file", "ref"}``: ``load_model(file)``, inference on the
  inputs of npz ``ref`` -> ``<name>_pred.npz`` (``y``).

Every model calls one ``Embedding(mask_zero=True)`` (or one ``Masking``) on two inputs
whose padding differs (trailing, leading, inside, none, a row of padding only), so each
call carries its own mask into the shared layers after it.
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
T, D, VOCAB = 7, 6, 20


def _pair() -> list[np.ndarray]:
    """Two token batches padded with 0 (the masked id), each row padded differently."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, VOCAB, (5, T)).astype(np.int32), rng.integers(1, VOCAB, (5, T)).astype(np.int32)
    a[0, 4:], b[0, 2:] = 0, 0  # trailing padding of different lengths
    a[1, :3], b[1, 5:] = 0, 0  # leading against trailing
    a[2, 2] = 0  # a hole against none
    b[3, 1:6] = 0  # none against most steps
    a[4, 6:], b[4, :] = 0, 0  # a padding-only row in b
    return [a, b]


def _inputs() -> tuple[Any, Any]:
    return keras.Input((T,), dtype="int32", name="a"), keras.Input((T,), dtype="int32", name="b")


def siamese_lstm() -> tuple[Any, list[np.ndarray]]:
    """Shared Embedding -> shared LSTM on both -> Subtract and Concatenate -> Dense."""
    a, b = _inputs()
    emb, lstm = L.Embedding(VOCAB, D, mask_zero=True, name="emb"), L.LSTM(5, name="lstm")
    ha, hb = lstm(emb(a)), lstm(emb(b))
    x = L.Concatenate(name="cat")([ha, hb, L.Subtract(name="sub")([ha, hb])])
    return keras.Model([a, b], L.Dense(3, name="out")(x)), _pair()


def siamese_gru_gap() -> tuple[Any, list[np.ndarray]]:
    """Shared Embedding -> shared Dense -> shared GRU returning sequences (which pass each
    call's mask on) -> shared masked GlobalAveragePooling1D -> Concatenate -> Dense."""
    a, b = _inputs()
    emb, dense = L.Embedding(VOCAB, D, mask_zero=True, name="emb"), L.Dense(4, activation="tanh", name="proj")
    gru, gap = L.GRU(4, return_sequences=True, name="gru"), L.GlobalAveragePooling1D(name="gap")
    x = L.Concatenate(name="cat")([gap(gru(dense(emb(a)))), gap(gru(dense(emb(b))))])
    return keras.Model([a, b], L.Dense(3, name="out")(x)), _pair()


def siamese_gap_subtract() -> tuple[Any, list[np.ndarray]]:
    """Shared Embedding -> shared masked mean -> Subtract -> Dense (a padding-only row: NaN)."""
    a, b = _inputs()
    emb, gap = L.Embedding(VOCAB, D, mask_zero=True, name="emb"), L.GlobalAveragePooling1D(name="gap")
    return keras.Model([a, b], L.Dense(2, name="out")(L.Subtract(name="sub")([gap(emb(a)), gap(emb(b))]))), _pair()


def shared_cross_attention() -> tuple[Any, list[np.ndarray]]:
    """One Embedding's two calls as query and value of MultiHeadAttention: the query's mask
    and the value's are those of different calls."""
    a, b = _inputs()
    emb = L.Embedding(VOCAB, D, mask_zero=True, name="emb")
    att = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(emb(a), emb(b))
    return keras.Model([a, b], L.Dense(3, name="out")(L.LSTM(4, name="lstm")(att))), _pair()


def shared_add() -> tuple[Any, list[np.ndarray]]:
    """The two calls' outputs added: tf_keras ANDs their masks, Keras 3 ORs them."""
    a, b = _inputs()
    emb = L.Embedding(VOCAB, D, mask_zero=True, name="emb")
    x = L.Add(name="add")([emb(a), emb(b)])
    return keras.Model([a, b], L.GlobalAveragePooling1D(name="gap")(x)), _pair()


def shared_masking() -> tuple[Any, list[np.ndarray]]:
    """One Masking layer on two float sequences -> one shared SimpleRNN -> Concatenate."""
    xa, xb = keras.Input((T, 3), name="xa"), keras.Input((T, 3), name="xb")
    masking, rnn = L.Masking(0.0, name="masking"), L.SimpleRNN(4, name="rnn")
    out = L.Concatenate(name="cat")([rnn(masking(xa)), rnn(masking(xb))])
    ids = _pair()
    values = np.random.default_rng(6).normal(0.0, 1.0, (2, 5, T, 3)).astype(np.float32)
    return keras.Model([xa, xb], out), [np.where(i[:, :, None] == 0, 0.0, v).astype(np.float32)
                                        for i, v in zip(ids, values)]


MODELS: dict[str, Callable[[], tuple[Any, list[np.ndarray]]]] = {
    fn.__name__: fn for fn in (siamese_lstm, siamese_gru_gap, siamese_gap_subtract, shared_cross_attention,
                               shared_add, shared_masking)}


def _run(model: Any, xs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(model(xs, training=False))


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model, xs = MODELS[task["model"]]()
    rng = np.random.default_rng(7)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, 0.3, tuple(weight.shape)).astype("float32"))
    y = _run(model, xs)
    reloaded = _flavour.save_and_reload(keras, model, work / task["name"], lambda again: _run(again, xs),
                                        unreadable=("NotEqual", "Any"))
    np.savez(work / f"{task['name']}_ref.npz", y=y, **reloaded, **{f"x{i}": x for i, x in enumerate(xs)})


if __name__ == "__main__":
    raise SystemExit(_flavour.run_job({"build": build, "predict": _flavour.predictor(keras, _run)}))
