"""Keras side of bnkit's recurrent-state tests: functional models whose layers give several
outputs (``return_state``) and take ``initial_state``, built by name.

Runs in its own process (TensorFlow and torch must not share one interpreter)::

    python states_jobs.py {tf_keras|keras3} JOB.json

``JOB.json``: ``{"workdir": dir, "tasks": [task, ...]}``; ``results_<flavour>_<job stem>.json``
in ``workdir`` maps task name -> ``"ok"`` or ``"Type: message"``.

* ``{"kind": "build", "name", "model"}``: the model :data:`MODELS` ``[model]`` builds, with
  seeded random weights (normal, std 0.5; BN variances uniform in [0.5, 2]), saved as
  ``<name>.h5`` and ``<name>.keras``; ``<name>_ref.npz`` holds its inputs ``x0, x1, ...``,
  its inference outputs ``y0, y1, ...`` and ``count`` (``count_params()``).
* ``{"kind": "predict", "name", "file", "inputs": npz}``: ``load_model(file)`` then inference
  on the ``x*`` arrays of ``inputs`` -> ``<name>_pred.npz`` (``y0, y1, ...``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flavour import flavour_argument, import_keras, run_job  # noqa: E402

FLAVOUR = flavour_argument()
_, keras = import_keras(FLAVOUR, onednn="0")

L = keras.layers
RNG = np.random.default_rng(11)
#: Right padding of unsorted lengths (the packed kernel sorts the batch) and masks with holes.
PADDED = np.array([[3, 1, 4, 0, 0, 0], [2, 6, 5, 3, 8, 1], [7, 0, 0, 0, 0, 0], [8, 9, 7, 9, 3, 0]], np.int32)
HOLES = np.array([[3, 0, 4, 1, 0, 9], [0, 6, 5, 0, 2, 0], [7, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], np.int32)


def _float(*shape: int) -> np.ndarray:
    return RNG.normal(0.0, 1.0, shape).astype(np.float32)


def _masked_float() -> np.ndarray:
    x = _float(4, 6, 3)
    x[0, 4:] = 0.0
    x[1, 1] = 0.0
    x[2, ::2] = 0.0
    return x


Built = tuple[Any, list[np.ndarray]]


def seq2seq_lstm() -> Built:
    """Keras' character-level seq2seq training model (two inputs, one softmax output)."""
    enc_in, dec_in = keras.Input((None, 5), name="encoder_inputs"), keras.Input((None, 6), name="decoder_inputs")
    _, state_h, state_c = L.LSTM(8, return_state=True, name="encoder")(enc_in)
    dec, _, _ = L.LSTM(8, return_sequences=True, return_state=True, name="decoder")(dec_in,
                                                                                   initial_state=[state_h, state_c])
    out = L.Dense(6, activation="softmax", name="decoder_dense")(dec)
    return keras.Model([enc_in, dec_in], out, name="seq2seq"), [_float(4, 5, 5), _float(4, 7, 6)]


def seq2seq_encoder() -> Built:
    """The inference encoder: the encoder's output and its two states (three outputs)."""
    enc_in = keras.Input((None, 5), name="encoder_inputs")
    outputs = L.LSTM(8, return_state=True, name="encoder")(enc_in)
    return keras.Model(enc_in, outputs, name="encoder_model"), [_float(4, 5, 5)]


def seq2seq_decoder() -> Built:
    """The inference decoder: states come in as Inputs and go out again."""
    dec_in = keras.Input((None, 6), name="decoder_inputs")
    h_in, c_in = keras.Input((8,), name="h_in"), keras.Input((8,), name="c_in")
    dec, h, c = L.LSTM(8, return_sequences=True, return_state=True, name="decoder")(dec_in, initial_state=[h_in, c_in])
    out = L.Dense(6, activation="softmax", name="decoder_dense")(dec)
    return keras.Model([dec_in, h_in, c_in], [out, h, c], name="decoder_model"), \
        [_float(4, 1, 6), _float(4, 8), _float(4, 8)]


def seq2seq_gru() -> Built:
    """GRU seq2seq, encoder with reset_after=False (the step loop), decoder with True (fused)."""
    enc_in, dec_in = keras.Input((None, 4), name="enc"), keras.Input((None, 3), name="dec")
    _, state = L.GRU(6, return_state=True, reset_after=False, name="gru_enc")(enc_in)
    dec = L.GRU(6, return_sequences=True, name="gru_dec")(dec_in, initial_state=[state])
    return keras.Model([enc_in, dec_in], L.Dense(3, name="head")(dec), name="gru_s2s"), \
        [_float(4, 5, 4), _float(4, 6, 3)]


def stacked_gru_states() -> Built:
    """A GRU hands its state to the next GRU, which runs backwards and returns its own."""
    x = keras.Input((6, 4), name="x")
    seq, h1 = L.GRU(5, return_sequences=True, return_state=True, name="gru1")(x)
    last, h2 = L.GRU(5, return_state=True, go_backwards=True, name="gru2")(seq, initial_state=h1)
    return keras.Model(x, [last, h2, h1], name="stacked_gru_states"), [_float(4, 6, 4)]


def lstm_all_outputs() -> Built:
    """Every output of an LSTM returning sequences and states."""
    x = keras.Input((6, 3), name="x")
    outputs = L.LSTM(5, return_sequences=True, return_state=True, name="lstm")(x)
    return keras.Model(x, outputs, name="lstm_all_outputs"), [_float(4, 6, 3)]


def bi_lstm_states() -> Built:
    """Bidirectional LSTM states, concatenated into Dense + BatchNormalization; a second
    Bidirectional starts from them; one with merge_mode=None returns both directions."""
    x = keras.Input((6, 3), name="x")
    out, fh, fc, bh, bc = L.Bidirectional(L.LSTM(4, return_state=True), merge_mode="sum", name="bi")(x)
    head = L.BatchNormalization(name="bn")(L.Dense(3, name="dense")(L.Concatenate(name="cat")([fh, bh])))
    again = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi_again")(x, initial_state=[fh, fc, bh, bc])
    both = L.Bidirectional(L.GRU(2, return_state=True), merge_mode=None, name="bi_none")(x)
    return keras.Model(x, [out, head, again, *both], name="bi_lstm_states"), [_float(4, 6, 3)]


def masked_encoder() -> Built:
    """Masked encoders with states: Embedding(mask_zero) on right padding (fused, packed) and
    with holes (step loop); Masking before a backwards GRU; masked decoders from the states
    (Keras 3 runs a call with initial_state unmasked, tf_keras masked: both are checked)."""
    pad_in, hole_in = keras.Input((6,), dtype="int32", name="padded"), keras.Input((6,), dtype="int32", name="holes")
    floats = keras.Input((6, 3), name="floats")
    embed = L.Embedding(10, 4, mask_zero=True, name="embed")
    _, h, c = L.LSTM(5, return_state=True, name="enc_lstm")(embed(pad_in))
    dec = L.LSTM(5, return_sequences=True, name="dec_lstm")(L.Embedding(10, 4, mask_zero=True, name="dec_embed")(
        hole_in), initial_state=[h, c])
    packed = L.LSTM(5, return_sequences=True, return_state=True, name="dec_packed")(
        L.Embedding(10, 4, mask_zero=True, name="pad_embed")(pad_in), initial_state=[h, c])
    seq, g = L.GRU(4, return_sequences=True, return_state=True, go_backwards=True, name="gru")(
        L.Masking(name="masking")(floats))
    state_head = L.Dense(2, name="state_head")(h)
    after = L.GRU(3, name="after_dec")(dec)  # the decoder's output mask reaches it (Keras 3 too)
    return keras.Model([pad_in, hole_in, floats], [state_head, c, dec, packed[0], packed[1], seq, g, after],
                       name="masked_encoder"), [PADDED, HOLES, _masked_float()]


def simple_rnn_states() -> Built:
    """SimpleRNN states: fused (tanh) into a sigmoid one (step loop), which starts from them."""
    x = keras.Input((6, 3), name="x")
    seq, h = L.SimpleRNN(4, return_sequences=True, return_state=True, name="rnn1")(x)
    out, h2 = L.SimpleRNN(4, activation="sigmoid", return_state=True, name="rnn2")(seq, initial_state=[h])
    return keras.Model(x, [out, h2, h], name="simple_rnn_states"), [_float(4, 6, 3)]


def shared_and_nested() -> Built:
    """A shared LSTM called twice, the second call starting from the first call's states, and
    a nested encoder model whose outputs are an LSTM's states."""
    x1, x2 = keras.Input((5, 3), name="x1"), keras.Input((4, 3), name="x2")
    shared = L.LSTM(4, return_state=True, name="shared")
    _, h1, c1 = shared(x1)
    o2, h2, _ = shared(x2, initial_state=[h1, c1])
    inner_in = keras.Input((5, 3), name="inner_in")
    _, ih, ic = L.LSTM(4, return_state=True, name="inner_lstm")(inner_in)
    encoder = keras.Model(inner_in, [ih, ic], name="encoder")
    nh, nc = encoder(x1)
    dec = L.GRU(4, name="after_nested")(x2, initial_state=[L.Add(name="add")([nh, nc])])
    return keras.Model([x1, x2], [o2, h2, c1, dec], name="shared_and_nested"), [_float(4, 5, 3), _float(4, 4, 3)]


MODELS: dict[str, Callable[[], Built]] = {fn.__name__: fn for fn in (
    seq2seq_lstm, seq2seq_encoder, seq2seq_decoder, seq2seq_gru, stacked_gru_states, lstm_all_outputs,
    bi_lstm_states, masked_encoder, simple_rnn_states, shared_and_nested)}


def _outputs(model: Any, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    result = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    result = result if isinstance(result, (list, tuple)) else [result]
    return {f"y{i}": np.asarray(y) for i, y in enumerate(result)}


def build(task: dict[str, Any], work: Path) -> None:
    keras.utils.set_random_seed(1234)
    model, inputs = MODELS[task["model"]]()
    rng = np.random.default_rng(7)
    for weight in model.weights:
        path = weight.path if hasattr(weight, "path") else weight.name
        value = rng.uniform(0.5, 2.0, tuple(weight.shape)) if "variance" in path else \
            rng.normal(0.0, 0.5, tuple(weight.shape))
        weight.assign(value.astype("float32"))
    model.save(str(work / f"{task['name']}.h5"))
    model.save(str(work / f"{task['name']}.keras"))
    np.savez(work / f"{task['name']}_ref.npz", count=np.array(model.count_params()),
             **{f"x{i}": x for i, x in enumerate(inputs)}, **_outputs(model, inputs))


def predict(task: dict[str, Any], work: Path) -> None:
    model = keras.models.load_model(task["file"], compile=False)
    with np.load(task["inputs"]) as data:
        inputs = [data[f"x{i}"] for i in range(sum(1 for key in data.files if key.startswith("x")))]
    np.savez(work / f"{task['name']}_pred.npz", **_outputs(model, inputs))


TASKS = {"build": build, "predict": predict}


if __name__ == "__main__":
    raise SystemExit(run_job(TASKS))
