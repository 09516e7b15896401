"""Keras ``MultiHeadAttention`` in torch: read, run and written back, tf_keras 2 and Keras 3.

The oracle (tests/keras_fixtures/attention_jobs.py, tf_keras 2.21 and Keras 3 in
subprocesses) builds every model of its ``MODELS`` with random weights, saves ``.h5`` and
``.keras`` and records its inference outputs and parameter counts; bnkit loads each file
here (TensorFlow is never imported in this process) and must give the same outputs (max
abs diff / max abs output <= 1e-5) and counts.  Round 2 writes the loaded models back
with ``save_model`` and has Keras reload and run them.  Without the oracle: the module
against a NumPy transcription of Keras' formula, and the refused options.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bnkit
from bnkit.keras import build_from_config, load_model, save_model
from bnkit.keras._attention import KerasMultiHeadAttention
from bnkit.keras.errors import KerasFormatError, UnsupportedLayerError
from bnkit.summary import summary
from tests.oracle_client import (check_round_trip, npz_inputs, predict, relative_error, require, round_trip_npz,
                                 run_jobs)

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "attention_jobs.py"
FLAVOURS = ("tf_keras", "keras3")
TOLERANCE = 1e-5
MODELS = ("self_block", "cross_no_key", "cross_key_dims", "name_clash", "no_bias_dropout", "text_classifier",
          "tiny_vit", "causal", "attention_mask", "mask_causal_dropout", "axes_2d")
REFUSED = ("refused_mask_zero", "refused_scores")
ONLY = {"tf_keras": ("robust_mask",), "keras3": ("sliding_window", "gated")}  # options of one framework
CASES = [(model, flavour) for flavour in FLAVOURS for model in MODELS + ONLY[flavour]]
WITH_BN = ("text_classifier", "tiny_vit")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("attention_oracle")
    tasks = {flavour: [{"kind": "build", "name": f"{flavour}_{model}", "model": model}
                       for model in MODELS + ONLY[flavour] + REFUSED] for flavour in FLAVOURS}
    return work, run_jobs(JOBS, work, tasks, "build")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_attention_models_equal_keras(built: Any, model_name: str, flavour: str, suffix: str) -> None:
    work, results = built
    name = f"{flavour}_{model_name}"
    require(results, flavour, name)
    ref = np.load(work / f"{name}_ref.npz")
    model = load_model(work / f"{name}.{suffix}")
    assert "MultiHeadAttention" in model.keras_classes.values()
    assert relative_error(predict(model, npz_inputs(ref)), ref["y"]) <= TOLERANCE
    if suffix == "keras":  # Keras' count_params, trainable and non-trainable weights
        counted = summary(model, input_data=[x[:1] for x in npz_inputs(ref)])
        assert [counted.total, counted.trainable, counted.non_trainable] == ref["counts"].tolist()


@pytest.mark.oracle
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("model_name", WITH_BN)
def test_batch_norm_folds_in_attention_models(built: Any, model_name: str, flavour: str) -> None:
    work, results = built
    name = f"{flavour}_{model_name}"
    require(results, flavour, name)
    ref = np.load(work / f"{name}_ref.npz")
    folded, report = bnkit.fold_batch_norm(load_model(work / f"{name}.keras"))
    assert len(report.folded) == 1 and not report.not_folded
    assert not any(isinstance(m, bnkit.BatchNormalization) for m in folded.modules())
    assert relative_error(predict(folded, npz_inputs(ref)), ref["y"]) <= TOLERANCE


@pytest.mark.oracle
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_refused_keras_models_name_layer_and_option(built: Any, flavour: str, suffix: str) -> None:
    work, results = built
    for model_name in REFUSED:
        require(results, flavour, f"{flavour}_{model_name}")
    # a propagated mask is no longer refused (see tests/test_keras_masked_attention.py): equal to Keras
    ref = np.load(work / f"{flavour}_refused_mask_zero_ref.npz")
    masked = load_model(work / f"{flavour}_refused_mask_zero.{suffix}")
    assert relative_error(predict(masked, npz_inputs(ref)), ref["y"]) <= TOLERANCE
    with pytest.raises(UnsupportedLayerError, match="'mha' \\(MultiHeadAttention\\).*return_attention_scores=True"):
        load_model(work / f"{flavour}_refused_scores.{suffix}")


@pytest.fixture(scope="module")
def round_trip(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each .keras file, writes .keras and .h5; Keras reloads and predicts."""
    work, results = built
    return work, round_trip_npz(JOBS, work, results, CASES)


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_saved_attention_models_reload_in_keras(round_trip: Any, model_name: str, flavour: str, suffix: str) -> None:
    work, results = round_trip
    check_round_trip(work, results, flavour, model_name, suffix, TOLERANCE)


# ---- without the oracle ------------------------------------------------------------------
def _numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, w: dict[str, np.ndarray], key_dim: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Keras' MultiHeadAttention on (B, T, F) inputs, from its equations (tf_keras' masking)."""
    qp = np.einsum("btf,fnh->btnh", q, w["qk"]) + w["qb"]
    kp = np.einsum("bsf,fnh->bsnh", k, w["kk"]) + w["kb"]
    vp = np.einsum("bsf,fnh->bsnh", v, w["vk"]) + w["vb"]
    scores = np.einsum("bsnh,btnh->bnts", kp, qp / math.sqrt(key_dim))
    if mask is not None:
        scores = scores + (1.0 - mask[:, None]) * -1e9
    e = np.exp(scores - scores.max(-1, keepdims=True))
    out = np.einsum("bnts,bsnh->btnh", e / e.sum(-1, keepdims=True), vp)
    return np.einsum("btnh,nho->bto", out, w["ok"]) + w["ob"]


def _random_module(**options: Any) -> tuple[KerasMultiHeadAttention, dict[str, np.ndarray]]:
    module = KerasMultiHeadAttention((6, 5, 4), 3, 2, 2, (7,), (1,), **options).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64).float() * 0.5)
    parts = {"q": module.query, "k": module.key, "v": module.value, "o": module.attention_output}
    return module, {f"{letter}{kind[0]}": getattr(part, kind).detach().double().numpy()
                    for letter, part in parts.items() for kind in ("kernel", "bias")}


def test_module_equals_the_numpy_formula_fused_and_einsum_paths() -> None:
    """The fused path (torch's scaled_dot_product_attention) and the einsum path (masks,
    several axes) agree with Keras' formula, and with each other to 1e-6 relative."""
    rng = np.random.default_rng(0)
    q, v, k = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 7, 5))
    module, weights = _random_module(has_key=True)
    tensors = [torch.from_numpy(a).float() for a in (q, v, k)]
    expected = _numpy_attention(q, k, v, weights, 2)
    with torch.no_grad():
        fused = module(tensors)
        scaled = module.query(tensors[0]) / math.sqrt(2.0)
        einsum = module.attention_output(module.attend(scaled, module.key(tensors[2]), module.value(tensors[1]),
                                                       None))
    for y in (fused, einsum):
        assert relative_error(y.double().numpy(), expected) <= 1e-6
    assert relative_error(fused.numpy(), einsum.numpy()) <= 1e-6


def test_masks_equal_the_numpy_formula() -> None:
    rng = np.random.default_rng(1)
    q, v, k = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 7, 5))
    mask = (rng.uniform(size=(2, 5, 7)) > 0.5).astype(np.float64)
    mask[:, :, 0] = 1.0
    module, weights = _random_module(has_key=True, has_mask=True)
    with torch.no_grad():
        y = module([torch.from_numpy(a).float() for a in (q, v, k, mask)]).double().numpy()
    assert relative_error(y, _numpy_attention(q, k, v, weights, 2, mask)) <= 1e-6
    causal = np.tril(np.ones((5, 7)))[None].repeat(2, 0)
    module.causal, module.has_mask = True, False
    with torch.no_grad():
        y = module([torch.from_numpy(a).float() for a in (q, v, k)]).double().numpy()
    assert relative_error(y, _numpy_attention(q, k, v, weights, 2, causal)) <= 1e-6


def test_dropout_applies_in_training_only() -> None:
    """Keras drops attention weights in training (rate 1: all of them, leaving the output bias)."""
    module, weights = _random_module(has_key=True, dropout=1.0)
    x = [torch.randn(2, 5, 6), torch.randn(2, 7, 4), torch.randn(2, 7, 5)]
    with torch.no_grad():
        inference = module(x)
        trained = module.train()(x)
    np.testing.assert_allclose(trained.numpy(), np.broadcast_to(weights["ob"], (2, 5, 7)), rtol=0, atol=1e-6)
    assert not torch.allclose(inference, trained)


def _mha_config(config: dict[str, Any] | None = None, node: Any = None, shape: tuple[int, ...] = (5, 4),
                extra_inputs: int = 0) -> dict[str, Any]:
    inputs = [{"class_name": "InputLayer", "name": f"x{i}", "inbound_nodes": [],
               "config": {"name": f"x{i}", "batch_input_shape": [None, *shape], "dtype": "float32"}}
              for i in range(1 + extra_inputs)]
    mha = {"class_name": "MultiHeadAttention", "name": "mha",
           "config": {"name": "mha", "num_heads": 2, "key_dim": 3, **(config or {})},
           "inbound_nodes": node if node is not None else [[["x0", 0, 0, {"value": ["x0", 0, 0]}]]]}
    return {"class_name": "Functional", "config": {"name": "m", "layers": [*inputs, mha],
                                                  "input_layers": [[f"x{i}", 0, 0] for i in range(1 + extra_inputs)],
                                                  "output_layers": [["mha", 0, 0]]}}


def _keras3_tensor(name: str, shape: list[Any]) -> dict[str, Any]:
    return {"class_name": "__keras_tensor__", "config": {"shape": shape, "dtype": "float32",
                                                         "keras_history": [name, 0, 0]}}


@pytest.mark.parametrize(("config", "node", "shape", "message"), [
    ({"sliding_window": 2, "attention_axes": [2]}, None, (3, 5, 4), "sliding_window"),
    ({"attention_axes": [-1]}, None, (5, 4), "attention_axes"),
    ({"attention_axes": [3]}, None, (3, 5, 4), "attention_axes"),
    ({"attention_axes": [1, 2]}, [[["x0", 0, 0, {"value": ["x0", 0, 0], "use_causal_mask": True}]]], (3, 5, 4),
     "use_causal_mask"),
    ({}, [[["x0", 0, 0, {"value": ["x0", 0, 0], "return_attention_scores": True}]]], (5, 4),
     "return_attention_scores"),
    ({}, [[["x0", 0, 0, {"value": ["x0", 0, 0], "bias": 1}]]], (5, 4), "`bias`"),
    ({"dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}},
     [{"args": [_keras3_tensor("x0", [None, 5, 4]), _keras3_tensor("x0", [None, 5, 4])],
       "kwargs": {"query_mask": _keras3_tensor("x0", [None, 5, 4])}}], (5, 4), "query_mask"),
])
def test_unsupported_options_are_refused_naming_layer_and_option(config: dict[str, Any], node: Any,
                                                                 shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message) as error:
        build_from_config(_mha_config(config, node, shape))
    assert "'mha'" in str(error.value) and "MultiHeadAttention" in str(error.value)


@pytest.mark.parametrize(("config", "node", "message"), [
    ({"num_heads": 0}, None, "num_heads"),
    ({"output_shape": "wide"}, None, "output_shape"),
    ({"sliding_window": 0}, None, "sliding_window"),
    ({}, [[["x0", 0, 0, {}]]], "`value` must be a tensor"),
    ({}, [[["x0", 0, 0, {"value": ["x0", 0, 0], "attention_mask": ["x1", 0, 0]}]]], "attention_mask"),
])
def test_invalid_configs_and_calls_are_clear_errors(config: dict[str, Any], node: Any, message: str) -> None:
    with pytest.raises(KerasFormatError, match=message) as error:
        build_from_config(_mha_config(config, node, extra_inputs=1))  # x1: (5, 4), not a (5, 5) mask
    assert "'mha'" in str(error.value)


def test_attention_in_a_sequential_model_is_a_clear_error() -> None:
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "x", "batch_input_shape": [None, 5, 4]}},
        {"class_name": "MultiHeadAttention", "config": {"name": "mha", "num_heads": 2, "key_dim": 3}}]}}
    with pytest.raises(KerasFormatError, match="'mha' \\(MultiHeadAttention\\).*functional model"):
        build_from_config(config)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_built_model_round_trips_in_both_dialects(tmp_path: Path, suffix: str) -> None:
    """A Keras 3 config keeps its call node and dtype policy through bnkit's writer and reader."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}}
    node = [{"args": [_keras3_tensor("x0", [None, 5, 4]), _keras3_tensor("x1", [None, 5, 4])],
             "kwargs": {"use_causal_mask": True}}]
    model = build_from_config(_mha_config({"dtype": policy, "output_shape": [2, 3]}, node, extra_inputs=1)).eval()
    save_model(model, tmp_path / f"m.{suffix}")
    again = load_model(tmp_path / f"m.{suffix}")
    assert again.keras_config == model.keras_config
    written = again.keras_config["config"]["layers"][-1]
    assert written["inbound_nodes"][0]["kwargs"] == {"use_causal_mask": True}
    x = [torch.randn(2, 5, 4), torch.randn(2, 5, 4)]
    with torch.no_grad():
        torch.testing.assert_close(again(*x), model(*x), rtol=0, atol=0)
        assert model(*x).shape == (2, 5, 2, 3)


def test_shared_attention_layer_is_refused() -> None:
    node = [["x0", 0, 0, {"value": ["x0", 0, 0]}]]
    with pytest.raises(UnsupportedLayerError, match="'mha' must be called exactly once"):
        build_from_config(_mha_config({}, [node, node]))


def test_export_of_a_masked_attention_model_equals_eager() -> None:
    node = [[["x0", 0, 0, {"value": ["x0", 0, 0], "attention_mask": ["x1", 0, 0], "use_causal_mask": True}]]]
    model = build_from_config(_mha_config({"dropout": 0.1}, node, shape=(5, 5), extra_inputs=1)).eval()
    x = (torch.randn(2, 5, 5), (torch.rand(2, 5, 5) > 0.3).float())
    exported = torch.export.export(model, x)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*x), model(*x), rtol=0, atol=1e-6)
