"""Keras 3's ``glu`` activation (``a * sigmoid(b)`` of the halves of the last axis).

The oracle (tests/keras_fixtures/glu_jobs.py, in subprocesses) builds Keras 3 models with
``Dense(n, activation="glu")`` and ``Activation("glu")`` (as outputs, on a sequence, as two
outputs, in a Sequential), saves them as ``.h5`` and ``.keras`` and reloads them itself.
bnkit loads each file and must give Keras' outputs, and its summary the shape of the
tensor Keras computes at each layer (half the features; Keras 3's own summary keeps the
unhalved shape).  Keras 3 reloads the files bnkit writes back, with the same outputs.
tf_keras 2 has no ``glu``: a tf_keras file whose Dense is renamed ``glu`` is refused by
tf_keras and by bnkit, as any unknown activation is.  TensorFlow is never imported here.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

import bnkit
from bnkit.keras import UnsupportedLayerError, load_model
from bnkit.keras._layers import Glu
from tests.oracle_client import require, run_jobs, write_back

JOBS = Path(__file__).resolve().parent / "keras_fixtures" / "glu_jobs.py"
MODELS = ("dense_glu", "activation_glu", "sequence_glu", "two_outputs", "sequential_glu")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    work = tmp_path_factory.mktemp("glu_oracle")
    tasks = {"keras3": [{"kind": "build", "name": f"keras3_{model}", "model": model} for model in MODELS],
             "tf_keras": [{"kind": "no_glu", "name": "no_glu"}, {"kind": "build_plain", "name": "tf_keras_plain"}]}
    return work, run_jobs(JOBS, work, tasks, "build")


def _outputs(ref: Any, prefix: str = "y") -> list[np.ndarray]:
    return [ref[f"{prefix}{i}"] for i in range(sum(k[len(prefix):].isdigit() for k in ref.files if
                                                   k.startswith(prefix)))]


def _predict(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return [y.numpy() for y in (out if isinstance(out, tuple) else (out,))]


def _check(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [y.shape for y in got] == [y.shape for y in expected]
    for y, e in zip(got, expected):
        assert np.abs(y - e).max() <= TOLERANCE * max(np.abs(e).max(), 1.0)


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("model_name", MODELS)
def test_glu_models_equal_keras3(built: Any, model_name: str, suffix: str) -> None:
    work, results = built
    name = f"keras3_{model_name}"
    require(results, "keras3", name)
    ref = np.load(work / f"{name}_ref.npz")
    expected = _outputs(ref)
    _check(_outputs(ref, f"y_{suffix}_"), expected)  # Keras 3 reloads its own file
    model = load_model(work / f"{name}.{suffix}")
    _check(_predict(model, ref["x0"]), expected)
    shapes = json.loads((work / f"{name}_shapes.json").read_text(encoding="utf-8"))
    table = bnkit.summary(model, input_data=torch.from_numpy(ref["x0"][:1]))
    rows = {row.name: list(row.output_shape) for row in table.rows if row.type != "InputLayer"}
    assert rows == shapes  # the shapes Keras computes (its own summary shows the unhalved ones)


@pytest.mark.oracle
@pytest.mark.slow
def test_tf_keras_has_no_glu_and_both_refuse_it(built: Any, tmp_path: Path) -> None:
    """tf_keras 2 has no ``glu``: its file renamed to use one is refused by tf_keras and by
    bnkit (the refusal of an unknown activation, unchanged)."""
    work, results = built
    require(results, "tf_keras", "no_glu")
    require(results, "tf_keras", "tf_keras_plain")
    patched = {}
    for suffix in ("h5", "keras"):
        source, target = work / f"tf_keras_plain.{suffix}", work / f"tf_keras_glu.{suffix}"
        if suffix == "h5":
            target.write_bytes(source.read_bytes())
            with h5py.File(target, "r+") as h5:
                text = h5.attrs["model_config"]
                text = text.decode() if isinstance(text, bytes) else text
                assert '"activation": "relu"' in text
                h5.attrs["model_config"] = text.replace('"activation": "relu"', '"activation": "glu"')
        else:
            with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
                for item in old.infolist():
                    data = old.read(item)
                    if item.filename == "config.json":
                        assert b'"activation": "relu"' in data
                        data = data.replace(b'"activation": "relu"', b'"activation": "glu"')
                    new.writestr(item, data)
        load_model(source)  # the unpatched file loads
        with pytest.raises(UnsupportedLayerError, match=r"'gated' \(Dense\): unsupported activation.*'glu'"):
            load_model(target)
        patched[suffix] = str(target)
    np.savez(work / "plain_ref.npz", x0=np.zeros((1, 6), np.float32))
    tasks = [{"kind": "predict", "name": f"tf_keras_glu_{suffix}", "file": path, "ref": str(work / "plain_ref.npz")}
             for suffix, path in patched.items()]
    refused = run_jobs(JOBS, work, {"tf_keras": tasks}, "refuse")["tf_keras"]
    for suffix in patched:
        # tf_keras words it "Unknown activation function: 'glu'" or, when deserializing a layer,
        # "Unknown activation function 'glu' cannot be deserialized"
        assert re.search(r"Unknown activation function:? 'glu'", refused[f"tf_keras_glu_{suffix}"])


@pytest.fixture(scope="module")
def round_trip(built: Any) -> tuple[Path, dict[str, dict[str, str]]]:
    """bnkit loads each .keras file, writes .keras and .h5; Keras 3 reloads and predicts."""
    work, results = built
    tasks = write_back(work, results, [(model, "keras3") for model in MODELS],
                       lambda model, flavour: {"ref": str(work / f"{flavour}_{model}_ref.npz")})
    return work, run_jobs(JOBS, work, {"keras3": tasks["keras3"]}, "predict")


@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["h5", "keras"])
@pytest.mark.parametrize("model_name", MODELS)
def test_saved_glu_models_reload_in_keras3(round_trip: Any, model_name: str, suffix: str) -> None:
    work, results = round_trip
    name = f"bnkit_keras3_{model_name}"
    require(results, "keras3", f"{name}_{suffix}")
    ref = np.load(work / f"keras3_{model_name}_ref.npz")
    _check(_outputs(np.load(work / f"{name}_{suffix}_pred.npz")), _outputs(ref))
    _check(_predict(load_model(work / f"{name}.{suffix}"), ref["x0"]), _outputs(ref))  # bnkit reads it back


# ---- without the oracle ------------------------------------------------------------------
def test_glu_module_equals_the_numpy_formula() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 8))
    a, b = x[..., :4], x[..., 4:]
    np.testing.assert_allclose(Glu(-1)(torch.from_numpy(x)).numpy(), a / (1.0 + np.exp(-b)), rtol=1e-12)
    y = rng.normal(size=(2, 6, 5))  # along a torch dim other than the last (a channels-first layout)
    np.testing.assert_allclose(Glu(1)(torch.from_numpy(y)).numpy(), y[:, :3] / (1.0 + np.exp(-y[:, 3:])), rtol=1e-12)
    with pytest.raises(ValueError, match="even size"):
        Glu(-1)(torch.zeros(2, 5))
