"""Sequence masks made by shared layers: each call carries the mask of its own input.

The oracle (tests/keras_fixtures/shared_mask_jobs.py, tf_keras 2.21 and Keras 3.15.1 in
subprocesses) builds siamese models: one ``Embedding(mask_zero=True)`` (or one ``Masking``)
called on two token inputs padded differently, into a shared LSTM, GRU, masked
GlobalAveragePooling1D, MultiHeadAttention (one call as query, the other as value) or an
Add of both calls, then Subtract/Concatenate/Dense.  bnkit loads each ``.h5`` and
``.keras`` file (TensorFlow is never imported here) and must give Keras' outputs (NaN where
Keras gives NaN, else max abs diff / max abs output <= 1e-5).  The files bnkit writes back
must give them in Keras too, and record the version of the Keras that built the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnkit.keras import load_model
from tests.oracle_client import (check_round_trip, npz_inputs, predict, relative_error, require, round_trip_npz,
                                 run_jobs)
from tests.test_keras_save_version import recorded_versions

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "shared_mask_jobs.py"
FLAVOURS = ("tf_keras", "keras3")
TOLERANCE = 1e-5
MODELS = ("siamese_lstm", "siamese_gru_gap", "siamese_gap_subtract", "shared_cross_attention", "shared_add",
          "shared_masking")
CASES = [(model, flavour) for flavour in FLAVOURS for model in MODELS]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("shared_mask_oracle")
    tasks = {flavour: [{"kind": "build", "name": f"{flavour}_{model}", "model": model} for model in MODELS]
             for flavour in FLAVOURS}
    return work, run_jobs(JOBS, work, tasks, "build")


@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_shared_mask_models_equal_keras(built: Any, model_name: str, flavour: str, suffix: str) -> None:
    work, results = built
    name = f"{flavour}_{model_name}"
    require(results, flavour, name)
    ref = np.load(work / f"{name}_ref.npz")
    if f"y_{suffix}" in ref.files:  # Keras reading its own file gives what the model gave
        np.testing.assert_array_equal(ref[f"y_{suffix}"], ref["y"])
    model = load_model(work / f"{name}.{suffix}")
    assert relative_error(predict(model, npz_inputs(ref)), ref["y"]) <= TOLERANCE


def test_the_two_inputs_need_their_own_masks(built: Any) -> None:
    """The batches exercise the per-call masks: the two inputs are padded differently, and
    where one row is padding only, the masked mean of that call is NaN in Keras."""
    work, results = built
    for flavour in FLAVOURS:
        require(results, flavour, f"{flavour}_siamese_gap_subtract")
        ref = np.load(work / f"{flavour}_siamese_gap_subtract_ref.npz")
        assert ((ref["x0"] == 0) != (ref["x1"] == 0)).any(axis=1).all()
        assert np.isnan(ref["y"]).any(axis=1).tolist() == (ref["x1"] == 0).all(axis=1).tolist()


@pytest.fixture(scope="module")
def round_trip(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each .keras file, writes .keras and .h5; Keras reloads and predicts."""
    work, results = built
    return work, round_trip_npz(JOBS, work, results, CASES)


@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize(("model_name", "flavour"), CASES)
def test_saved_shared_mask_models_reload_in_keras(round_trip: Any, model_name: str, flavour: str,
                                                  suffix: str) -> None:
    work, results = round_trip
    again = check_round_trip(work, results, flavour, model_name, suffix, TOLERANCE)
    name = f"bnkit_{flavour}_{model_name}"
    # the written file says which Keras it speaks: the version the Keras that built it recorded
    keras_wrote = recorded_versions(work / f"{flavour}_{model_name}.keras")[0]
    assert keras_wrote.startswith("3." if flavour == "keras3" else "2.")
    assert set(recorded_versions(work / f"{name}.{suffix}")) == {keras_wrote}
    assert again.keras_version == keras_wrote
