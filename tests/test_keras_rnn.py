"""Keras sequence models (Embedding, Masking, SimpleRNN, LSTM, GRU, Bidirectional) in torch.

The oracle (tests/keras_fixtures/rnn_jobs.py, tf_keras 2.21 and Keras 3 in subprocesses)
builds every recipe below with random weights, saves ``.h5`` and ``.keras`` and records its
inference outputs; bnkit loads each file here (TensorFlow is never imported in this
process) and must give the same outputs (max abs diff / max abs output <= 1e-5).  Round 2
writes the loaded models back with ``save_model`` and has Keras reload and run them.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnkit.keras import build_from_config, load_model
from bnkit.keras._rnn_layers import KerasLSTM, RecurrentConfig, recurrent
from bnkit.keras.errors import KerasFormatError, UnsupportedLayerError
from tests.oracle_client import require, run_jobs, write_back

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "rnn_jobs.py"
FLAVOURS = ("tf_keras", "keras3")
TOLERANCE = 1e-5

RIGHT_PADDED = np.array([[3, 1, 4, 1, 5, 9, 2], [2, 6, 5, 3, 0, 0, 0], [7, 0, 0, 0, 0, 0, 0],
                         [8, 9, 7, 9, 3, 2, 3]], dtype=np.float32)
HOLES = np.array([[3, 0, 4, 1, 0, 9, 2], [0, 6, 5, 0, 2, 0, 0], [7, 1, 1, 0, 0, 0, 1],
                  [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)  # masks that are not padding, one empty
EMB = ["Embedding", {"input_dim": 10, "output_dim": 5, "mask_zero": True}]


def _recipes() -> dict[str, dict[str, Any]]:
    seq = (7, 4)
    recipes = {
        # the typical models
        "text_lstm_bn": ((7,), "right_padded", [EMB, ["LSTM", {"units": 6}], ["BatchNormalization", {}],
                                                ["Dense", {"units": 3, "activation": "softmax"}]]),
        "stacked_gru": (seq, "float", [["GRU", {"units": 5, "return_sequences": True}],
                                       ["GRU", {"units": 4, "return_sequences": True}], ["Flatten", {}],
                                       ["Dense", {"units": 2}]]),
        "bi_lstm": ((7,), "right_padded", [EMB, ["Bidirectional", {"layer": ["LSTM", {"units": 4,
                                                                                     "return_sequences": True}]}],
                                           ["Bidirectional", {"layer": ["LSTM", {"units": 3}], "merge_mode": "sum"}],
                                           ["Dense", {"units": 2}]]),
        # options
        "simple_rnn_relu_back": (seq, "float", [["SimpleRNN", {"units": 5, "activation": "relu", "go_backwards": True,
                                                               "return_sequences": True}], ["Flatten", {}]]),
        "simple_rnn_sigmoid": (seq, "float", [["SimpleRNN", {"units": 3, "activation": "sigmoid",
                                                             "use_bias": False}]]),
        "gru_before_holes": ((7,), "holes", [EMB, ["GRU", {"units": 4, "reset_after": False,
                                                           "recurrent_activation": "hard_sigmoid",
                                                           "activation": "relu", "return_sequences": True}],
                                             ["GRU", {"units": 3, "go_backwards": True}]]),
        "lstm_masking_layer": (seq, "masked_float", [["Masking", {"mask_value": 0.0}],
                                                     ["LSTM", {"units": 4, "use_bias": False,
                                                               "recurrent_activation": "hard_sigmoid",
                                                               "return_sequences": True}], ["Flatten", {}]]),
        "bi_gru_mul": ((7,), "holes", [EMB, ["Bidirectional", {
            "layer": ["GRU", {"units": 3, "return_sequences": True}], "merge_mode": "mul"}],
            ["Bidirectional", {"layer": ["SimpleRNN", {"units": 2}], "merge_mode": "ave"}]]),
        "bi_explicit_backward": (seq, "float", [["Bidirectional", {
            "layer": ["LSTM", {"units": 3, "return_sequences": True}],
            "backward_layer": ["LSTM", {"units": 3, "go_backwards": True, "return_sequences": True,
                                        "activation": "relu"}]}], ["Flatten", {}]]),
        "mask_through_layers": ((7,), "holes", [EMB, ["Dropout", {"rate": 0.3}], ["Dense", {"units": 6}],
                                                ["BatchNormalization", {}], ["Activation", {"activation": "tanh"}],
                                                ["LSTM", {"units": 3, "dropout": 0.2, "recurrent_dropout": 0.1}]]),
        "padded_options": ((7,), "right_padded", [
            EMB, ["GRU", {"units": 4, "return_sequences": True}],
            ["LSTM", {"units": 3, "go_backwards": True, "return_sequences": True}],
            ["SimpleRNN", {"units": 2, "zero_output_for_mask": True}]]),
        "attention_dot": (seq, "float", [["Dense", {"units": 6}], ["Attention", {"use_scale": True}],
                                         ["LSTM", {"units": 3}]]),
        "attention_concat": (seq, "float", [["GRU", {"units": 5, "return_sequences": True}],
                                            ["Attention", {"score_mode": "concat", "use_scale": True, "dropout": 0.2}],
                                            ["Flatten", {}], ["Dense", {"units": 2}]]),
        "gru_reset_after_dropout": (seq, "float", [["GRU", {"units": 4, "dropout": 0.5, "recurrent_dropout": 0.5,
                                                            "use_bias": True}], ["Dense", {"units": 2}]]),
    }
    return {name: {"input": list(shape), "x": x, "layers": layers} for name, (shape, x, layers) in recipes.items()}


RECIPES = _recipes()
#: Also built as functional models: Keras 3 then records masks as NotEqual layers and call arguments.
FUNCTIONAL = ("text_lstm_bn", "bi_lstm", "mask_through_layers", "gru_before_holes", "stacked_gru",
              "lstm_masking_layer")
ONLY_FUNCTIONAL = ("attention_dot", "attention_concat")  # Attention takes [query, value]: self-attention here
CASES = sorted([*(name for name in RECIPES if name not in ONLY_FUNCTIONAL),
                *(f"{name}_fn" for name in FUNCTIONAL + ONLY_FUNCTIONAL)])


def _recipe(case: str) -> dict[str, Any]:
    return RECIPES[case.removesuffix("_fn")]


def _inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    masked = rng.normal(0.0, 1.0, (4, 7, 4)).astype(np.float32)
    masked[0, 5:] = 0.0
    masked[1, 2] = 0.0
    masked[3] = 0.0
    return {"right_padded": RIGHT_PADDED, "holes": HOLES, "float": rng.normal(0.0, 1.0, (4, 7, 4)).astype(np.float32),
            "masked_float": masked}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("rnn_oracle")
    for key, array in _inputs(np.random.default_rng(5)).items():
        np.savez(work / f"{key}.npz", x=array)
    tasks = {flavour: [{"kind": "build", "name": f"{flavour}_{case}", "input": _recipe(case)["input"],
                        "layers": _recipe(case)["layers"], "x": str(work / f"{_recipe(case)['x']}.npz"),
                        "functional": case.endswith("_fn")} for case in CASES] for flavour in FLAVOURS}
    # Keras 3 refuses a go_backwards layer inside Bidirectional; tf_keras runs it backwards twice
    tasks["tf_keras"].append({"kind": "build", "name": "tf_keras_bi_inner_backwards", "input": [7, 4],
                              "layers": [["Bidirectional", {"layer": ["GRU", {"units": 3, "go_backwards": True,
                                                                              "return_sequences": True}]}]],
                              "x": str(work / "float.npz")})
    tasks["keras3"].append({"kind": "build", "name": "keras3_user_mask", "functional": True, "input": [7],
                            "layers": [["Embedding", {"input_dim": 10, "output_dim": 5}], ["LSTM", {"units": 3}]],
                            "user_mask": True, "x": str(work / "right_padded.npz")})
    return work, run_jobs(JOBS, work, tasks, "build")


def _close(y: np.ndarray, expected: np.ndarray) -> float:
    assert y.shape == expected.shape
    return float(np.abs(y - expected).max() / max(np.abs(expected).max(), 1e-12))


def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("recipe", CASES)
def test_sequence_models_equal_keras(built: Any, recipe: str, flavour: str, suffix: str) -> None:
    work, results = built
    name = f"{flavour}_{recipe}"
    require(results, flavour, name)
    ref = np.load(work / f"{name}_ref.npz")
    model = load_model(work / f"{name}.{suffix}")
    assert _close(_predict(model, ref["x"]), ref["y"]) <= TOLERANCE


@pytest.mark.oracle
@pytest.mark.parametrize("suffix", ["h5", "keras"])
def test_tf_keras_bidirectional_of_a_backwards_layer(built: Any, suffix: str) -> None:
    work, results = built
    require(results, "tf_keras", "tf_keras_bi_inner_backwards")
    ref = np.load(work / "tf_keras_bi_inner_backwards_ref.npz")
    model = load_model(work / f"tf_keras_bi_inner_backwards.{suffix}")
    assert _close(_predict(model, ref["x"]), ref["y"]) <= TOLERANCE


@pytest.mark.oracle
def test_keras3_masks_bnkit_does_not_rebuild_are_refused(built: Any) -> None:
    """A mask the user computed (``LSTM()(x, mask=ops.not_equal(ids, 0))`` without mask_zero)."""
    work, results = built
    require(results, "keras3", "keras3_user_mask")
    with pytest.raises(UnsupportedLayerError, match="'lstm.*' \\(LSTM\\).*mask `x != 0`"):
        load_model(work / "keras3_user_mask.keras")


@pytest.fixture(scope="module")
def round_trip(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each .keras file, writes .keras and .h5; Keras reloads and predicts."""
    work, results = built
    tasks = write_back(work, results, [(recipe, flavour) for flavour in FLAVOURS for recipe in CASES],
                       lambda recipe, flavour: {"x": str(work / f"{_recipe(recipe)['x']}.npz")})
    return work, run_jobs(JOBS, work, tasks, "predict")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("recipe", CASES)
def test_saved_sequence_models_reload_in_keras(round_trip: Any, recipe: str, flavour: str, suffix: str) -> None:
    work, results = round_trip
    name = f"bnkit_{flavour}_{recipe}"
    require(results, flavour, f"{name}_{suffix}")
    ref = np.load(work / f"{flavour}_{recipe}_ref.npz")
    keras_y = np.load(work / f"{name}_{suffix}_pred.npz")["y"]
    assert _close(keras_y, ref["y"]) <= TOLERANCE
    again = load_model(work / f"{name}.{suffix}")  # and bnkit reads its own file back
    assert _close(_predict(again, ref["x"]), ref["y"]) <= TOLERANCE


# ---- without the oracle ------------------------------------------------------------------
def _config(*layers: tuple[str, dict[str, Any], list[str]], shape: list[int | None]) -> dict[str, Any]:
    entries = [{"class_name": "InputLayer", "name": "x", "inbound_nodes": [],
                "config": {"name": "x", "batch_input_shape": [None, *shape], "dtype": "float32"}}]
    for cls, cfg, inbound in layers:
        entries.append({"class_name": cls, "name": cfg["name"], "config": cfg,
                        "inbound_nodes": [[[ref, 0, 0, {}] for ref in inbound]]})
    return {"class_name": "Functional", "config": {"name": "m", "layers": entries, "input_layers": [["x", 0, 0]],
                                                  "output_layers": [[entries[-1]["name"], 0, 0]]}}


def _lstm(**options: Any) -> tuple[str, dict[str, Any], list[str]]:
    return ("LSTM", {"name": "rnn", "units": 3, **options}, ["x"])


@pytest.mark.parametrize(("options", "message"), [
    ({"stateful": True}, "stateful"),
    ({"time_major": True}, "time_major"),
    ({"activation": "hard_silu"}, "hard_silu"),
    ({"recurrent_activation": "mish"}, "mish"),
    ({"units": 0}, "units"),
])
def test_unsupported_recurrent_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(KerasFormatError, match=message) as error:
        build_from_config(_config(_lstm(**options), shape=[5, 2]))
    assert "'rnn'" in str(error.value)


def test_bidirectional_without_merge_gives_both_directions() -> None:
    bi = ("Bidirectional", {"name": "bi", "merge_mode": None,
                            "layer": {"class_name": "GRU", "config": {"name": "g", "units": 2}}}, ["x"])
    model = build_from_config(_config(bi, shape=[5, 2])).eval()  # the first output: the forward layer's
    layer = model.layers["bi"]
    x = torch.randn(3, 5, 2)
    forward = recurrent(layer.configs["forward"], x, layer.forward_kernel, layer.forward_recurrent_kernel,
                        layer.forward_bias)
    torch.testing.assert_close(model(x), forward, rtol=0, atol=0)


def test_mask_reaching_an_unmasked_layer_is_refused() -> None:
    emb = ("Embedding", {"name": "emb", "input_dim": 5, "output_dim": 2, "mask_zero": True}, ["x"])
    cat = ("Concatenate", {"name": "cat", "axis": -1}, ["emb", "emb"])  # merges like Add pass masks on
    with pytest.raises(UnsupportedLayerError, match="'cat' \\(Concatenate\\)"):
        build_from_config(_config(emb, cat, shape=[4]))


def test_lstm_without_unit_forget_bias_starts_with_zero_biases() -> None:
    model = build_from_config(_config(_lstm(unit_forget_bias=False), shape=[5, 2]))
    np.testing.assert_array_equal(model.layers["rnn"].bias.detach().numpy(), np.zeros(12, dtype=np.float32))


def test_built_lstm_has_keras_initial_weights() -> None:
    model = build_from_config(_config(_lstm(unit_forget_bias=True), shape=[5, 2]))
    rnn = model.layers["rnn"]
    assert isinstance(rnn, KerasLSTM)
    expected_bias = np.zeros(12, dtype=np.float32)
    expected_bias[3:6] = 1.0  # unit_forget_bias: the forget gate starts open
    np.testing.assert_array_equal(rnn.bias.detach().numpy(), expected_bias)
    r = rnn.recurrent_kernel.detach().double().numpy()  # orthogonal rows: R R^T = I
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
    limit = (6.0 / (2 + 12)) ** 0.5
    assert 0 < np.abs(rnn.kernel.detach().numpy()).max() <= limit


def _numpy_lstm(x: np.ndarray, k: np.ndarray, r: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keras' LSTM cell with masking, from its equations (returns all outputs)."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    units = r.shape[0]
    h = c = out = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ k + h @ r + b
        i, f, g, o = (z[:, n * units:(n + 1) * units] for n in range(4))
        c_new = sig(f) * c + sig(i) * np.tanh(g)
        h_new = sig(o) * np.tanh(c_new)
        keep = mask[:, t:t + 1]
        h, c, out = np.where(keep, h_new, h), np.where(keep, c_new, c), np.where(keep, h_new, out)
        outputs.append(out)
    return np.stack(outputs, 1)


def test_fused_and_step_kernels_equal_the_numpy_cell() -> None:
    rng = np.random.default_rng(3)
    x, k = rng.normal(size=(3, 6, 4)), rng.normal(0, 0.5, (4, 8))
    r, b = rng.normal(0, 0.5, (2, 8)), rng.normal(0, 0.5, 8)
    full = np.ones((3, 6), dtype=bool)
    holes = rng.uniform(size=(3, 6)) > 0.4
    cfg = RecurrentConfig("LSTM", 2, return_sequences=True)
    t = [torch.from_numpy(a) for a in (x, k, r, b)]
    fused = recurrent(cfg, *t).numpy()  # no mask: torch's fused kernel
    stepped = recurrent(cfg, *t, mask=torch.from_numpy(holes)).numpy()
    np.testing.assert_allclose(fused, _numpy_lstm(x, k, r, b, full), atol=1e-12)
    np.testing.assert_allclose(stepped, _numpy_lstm(x, k, r, b, holes), atol=1e-12)


def test_recurrent_dropout_refuses_training_and_dropout_trains() -> None:
    model = build_from_config(_config(_lstm(dropout=0.5, recurrent_dropout=0.2), shape=[5, 2]))
    x = torch.randn(2, 5, 2)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    with pytest.raises(ValueError, match="recurrent_dropout"):
        model(x)
    model = build_from_config(_config(_lstm(dropout=0.5), shape=[5, 2])).train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model.eval()(x))


def test_embedding_ids_out_of_range_are_a_clear_error() -> None:
    emb = ("Embedding", {"name": "emb", "input_dim": 5, "output_dim": 2}, ["x"])
    model = build_from_config(_config(emb, shape=[3]))
    assert model(torch.tensor([[0.0, 4.9, 2.0]])).shape == (1, 3, 2)
    with pytest.raises(ValueError, match="\\[0, 5\\).*received values from 0 to 5"):
        model(torch.tensor([[0.0, 5.0, 1.0]]))


@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
def test_right_padded_masks_run_packed_like_the_step_loop(kind: str, backwards: bool, zero_output: bool) -> None:
    """Right padding takes torch's fused kernel on packed sequences; the step loop (checked
    against Keras above) is the reference, here forced by a mask that is not padding."""
    import bnkit.keras._rnn_kernels as rl

    rng = np.random.default_rng(11)
    units, gates = 3, rl.GATES[kind]
    x = torch.from_numpy(rng.normal(size=(4, 6, 2)))
    k = torch.from_numpy(rng.normal(0, 0.6, (2, gates * units)))
    r = torch.from_numpy(rng.normal(0, 0.6, (3, gates * units)))
    b = torch.from_numpy(rng.normal(0, 0.3, (2, gates * units) if kind == "GRU" else (gates * units,)))
    lengths = torch.tensor([6, 1, 4, 2])
    mask = torch.arange(6) < lengths[:, None]
    cfg = RecurrentConfig(kind, units, return_sequences=True, go_backwards=backwards,
                          zero_output_for_mask=zero_output)
    assert rl._right_padded(mask) is not None and rl._right_padded(mask.flip(1)) is None
    packed = recurrent(cfg, x, k, r, b, mask)
    flipped = x.flip(1) if backwards else x
    looped, last, _ = rl._loop(cfg, flipped, k, r, b, mask.flip(1) if backwards else mask)
    torch.testing.assert_close(packed, looped, rtol=0, atol=1e-12)
    final = recurrent(replace(cfg, return_sequences=False), x, k, r, b, mask)
    torch.testing.assert_close(final, last, rtol=0, atol=1e-12)


def _text_model() -> Any:
    emb = ("Embedding", {"name": "emb", "input_dim": 9, "output_dim": 4, "mask_zero": True}, ["x"])
    bi = ("Bidirectional", {"name": "bi", "layer": {"class_name": "LSTM", "config": {
        "name": "l", "units": 3, "return_sequences": True}}}, ["emb"])
    gru = ("GRU", {"name": "gru", "units": 2, "go_backwards": True}, ["bi"])
    return build_from_config(_config(emb, bi, gru, shape=[6])).eval()


def test_export_of_a_masked_model_equals_eager() -> None:
    """Exported, right-padded masks take the step loop (no data-dependent branch); eager takes
    the packed fused kernels: the two must agree."""
    model = _text_model()
    ids = torch.tensor([[1.0, 2, 3, 4, 5, 6], [3, 1, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0]])
    exported = torch.export.export(model, (ids,))
    torch.testing.assert_close(exported.module()(ids), model(ids), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_of_a_masked_model_equals_eager() -> None:
    model = _text_model()
    ids = torch.tensor([[1.0, 2, 0, 4, 5, 0], [3, 1, 0, 0, 0, 0]])  # holes: the step loop either way
    with torch.no_grad():
        compiled = torch.compile(model, backend="aot_eager")
        torch.testing.assert_close(compiled(ids), model(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("options", "inputs", "message"), [
    ({"use_causal_mask": True}, 2, "use_causal_mask"),
    ({"score_mode": "additive"}, 2, "score_mode"),
    ({}, 1, "\\[query, value\\]"),
])
def test_unsupported_attention_calls_are_refused(options: dict[str, Any], inputs: int, message: str) -> None:
    attention = ("Attention", {"name": "att", **options}, ["x"] * inputs)
    with pytest.raises(KerasFormatError, match=message):
        build_from_config(_config(attention, shape=[5, 2]))
