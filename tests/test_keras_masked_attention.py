"""Keras sequence masks around ``MultiHeadAttention``: tf_keras 2 and Keras 3, read, run and
written back.

The oracle (tests/keras_fixtures/masked_attention_jobs.py, in subprocesses) builds models
whose ``Embedding(mask_zero=True)`` or ``Masking`` mask flows through merges, Dropout,
LayerNormalization, Dense, Activation and BatchNormalization into MultiHeadAttention (query,
value and key masks, with the causal and an explicit mask), GlobalAveragePooling1D (a
masked mean), GlobalMaxPooling1D (no mask) and LSTM, on padded token batches (trailing,
leading and inner padding, and a row of padding only, whose masked mean is NaN in Keras).
bnkit loads each ``.h5`` and ``.keras`` file (TensorFlow is never imported here) and must
give Keras' outputs (NaN where Keras gives NaN, else max abs diff / max abs output <= 1e-5)
and its parameter counts; the files bnkit writes back must give them in Keras too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnkit.keras import load_model
from bnkit.keras._attention import KerasMultiHeadAttention
from bnkit.keras._pooling import MaskedMean1d
from bnkit.keras.errors import UnsupportedLayerError
from bnkit.summary import summary
from tests.oracle_client import (check_round_trip, npz_inputs, predict, relative_error, require, round_trip_npz,
                                 run_jobs)

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "masked_attention_jobs.py"
FLAVOURS = ("tf_keras", "keras3")
TOLERANCE = 1e-5
MODELS = ("transformer", "transformer_positions", "mha_gap", "cross_masked_value", "cross_masked_key",
          "cross_masked_query", "masks_causal_explicit", "max_pooled", "lstm_after_add", "two_masks_add",
          "subtract_average", "sequential_gap")
ONLY = {"tf_keras": ("two_masks_multiply", "maximum_minimum"), "keras3": ()}
#: (model, flavour, what the refusal must name)
REFUSED = [("refused_conv", flavour, "'conv' \\(Conv1D\\)") for flavour in FLAVOURS] + [
    ("two_masks_multiply", "keras3", "'merge' \\(Multiply\\)"), ("maximum_minimum", "keras3", "'max' \\(Maximum\\)")]
CASES = [(model, flavour) for flavour in FLAVOURS for model in MODELS + ONLY[flavour]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("masked_attention_oracle")
    models = {flavour: MODELS + ONLY[flavour] + tuple(m for m, f, _ in REFUSED if f == flavour)
              for flavour in FLAVOURS}
    tasks = {flavour: [{"kind": "build", "name": f"{flavour}_{model}", "model": model} for model in models[flavour]]
             for flavour in FLAVOURS}
    return work, run_jobs(JOBS, work, tasks, "build")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_masked_models_equal_keras(built: Any, model_name: str, flavour: str, suffix: str) -> None:
    work, results = built
    name = f"{flavour}_{model_name}"
    require(results, flavour, name)
    ref = np.load(work / f"{name}_ref.npz")
    if f"y_{suffix}" in ref.files:  # Keras reading its own file gives what the model gave
        np.testing.assert_array_equal(ref[f"y_{suffix}"], ref["y"])
    model = load_model(work / f"{name}.{suffix}")
    assert relative_error(predict(model, npz_inputs(ref)), ref["y"]) <= TOLERANCE
    if suffix == "keras":  # Keras' count_params, trainable and non-trainable weights
        counted = summary(model, input_data=[x[:1] for x in npz_inputs(ref)])
        assert [counted.total, counted.trainable, counted.non_trainable] == ref["counts"].tolist()


@pytest.mark.oracle
@pytest.mark.slow
def test_padding_rows_are_what_the_masks_are_about(built: Any) -> None:
    """The batches exercise the masks: the all-padding row pools to NaN in the masked mean
    (so the masked path ran), and the max pooling, which takes no mask, stays finite."""
    work, results = built
    for flavour in FLAVOURS:
        require(results, flavour, f"{flavour}_mha_gap")
        assert np.isnan(np.load(work / f"{flavour}_mha_gap_ref.npz")["y"][4]).all()
        require(results, flavour, f"{flavour}_max_pooled")
        assert np.isfinite(np.load(work / f"{flavour}_max_pooled_ref.npz")["y"]).all()


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour", "named"), REFUSED)
def test_masks_reaching_unsupported_layers_are_refused(built: Any, model_name: str, flavour: str, named: str,
                                                       suffix: str) -> None:
    work, results = built
    require(results, flavour, f"{flavour}_{model_name}")
    with pytest.raises(UnsupportedLayerError, match=f"mask .*{named}"):
        load_model(work / f"{flavour}_{model_name}.{suffix}")


@pytest.fixture(scope="module")
def round_trip(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each .keras file, writes .keras and .h5; Keras reloads and predicts."""
    work, results = built
    return work, round_trip_npz(JOBS, work, results, CASES)


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_saved_masked_models_reload_in_keras(round_trip: Any, model_name: str, flavour: str, suffix: str) -> None:
    work, results = round_trip
    check_round_trip(work, results, flavour, model_name, suffix, TOLERANCE)


# ---- without the oracle ------------------------------------------------------------------
def test_masked_mean_equals_the_numpy_formula() -> None:
    """Keras' masked GlobalAveragePooling1D, ``sum(x * mask) / sum(mask)`` over the steps; a
    row with no step kept gives NaN (0 / 0) as in Keras."""
    rng = np.random.default_rng(1)
    x, mask = rng.normal(size=(3, 4, 6)), rng.uniform(size=(3, 6)) > 0.4
    mask[2] = False
    with np.errstate(invalid="ignore"):
        expected = (x * mask[:, None, :]).sum(2) / mask.sum(1)[:, None]
    for keras3 in (False, True):
        got = MaskedMean1d(keras3=keras3)([torch.from_numpy(x), torch.from_numpy(mask)]).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-12)


def test_attention_sequence_masks_equal_the_numpy_formula() -> None:
    """Query, value and key masks combine as ``q[:, :, None] & v[:, None, :] & k[:, None, :]``
    (tf_keras adds -1e9 to masked scores); a fully masked query row averages the values."""
    rng = np.random.default_rng(2)
    module = KerasMultiHeadAttention((6, 5, 4), 2, 3, 3, (6,), (1,), has_key=True, seq_masks=(True, True, True))
    module = module.double().eval()
    q, v, k = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 7, 5))
    qm, vm, km = rng.uniform(size=(2, 5)) > 0.3, rng.uniform(size=(2, 7)) > 0.3, rng.uniform(size=(2, 7)) > 0.2
    qm[1, 0], vm[:, 0], km[:, 0] = False, True, True
    w = {name: getattr(module, part).kernel.detach().numpy() for name, part in
         (("q", "query"), ("k", "key"), ("v", "value"), ("o", "attention_output"))}
    bias = {name: getattr(module, part).bias.detach().numpy() for name, part in
            (("q", "query"), ("k", "key"), ("v", "value"), ("o", "attention_output"))}
    qp = np.einsum("btf,fnh->btnh", q, w["q"]) + bias["q"]
    kp = np.einsum("bsf,fnh->bsnh", k, w["k"]) + bias["k"]
    vp = np.einsum("bsf,fnh->bsnh", v, w["v"]) + bias["v"]
    scores = np.einsum("bsnh,btnh->bnts", kp, qp / np.sqrt(3.0))
    keep = qm[:, :, None] & vm[:, None, :] & km[:, None, :]
    scores = scores + (1.0 - keep[:, None]) * -1e9
    e = np.exp(scores - scores.max(-1, keepdims=True))
    out = np.einsum("bnts,bsnh->btnh", e / e.sum(-1, keepdims=True), vp)
    expected = np.einsum("btnh,nho->bto", out, w["o"]) + bias["o"]
    with torch.no_grad():
        got = module([torch.from_numpy(a) for a in (q, v, k, qm, vm, km)]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # in float32, as Keras runs it, a fully masked query row's scores all round to -1e9: the
    # weights are uniform and the row attends to the mean of the values
    with torch.no_grad():
        got32 = module.float()([torch.from_numpy(a).float() if a.dtype != bool else torch.from_numpy(a)
                                for a in (q, v, k, qm, vm, km)]).numpy()
    masked_row = np.einsum("bsnh,nho->bo", vp, w["o"])[1] / 7 + bias["o"]
    np.testing.assert_allclose(got32[1, 0], masked_row, rtol=1e-5, atol=1e-5)
