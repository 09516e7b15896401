"""The ``keras_version`` bnkit records when it writes a Keras file.

A model read from a Keras 3 file is written back saying so (the version the Keras 3 file
recorded), one read from tf_keras says 2.x: the committed files in tests/keras_fixtures were
written by tf_keras 2.21 and Keras 3.15.1, and the expected versions are read from those
files themselves.  That both Keras reload such files with Keras' outputs is checked against
the live oracle in test_keras_shared_masks.py (and test_keras_oracle.py).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import bnkit.keras as bk
from bnkit.keras._save import written_version

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"


def recorded_versions(path: Path) -> list[str]:
    """Every ``keras_version`` a Keras file records: the archive's metadata, or the ``.h5``
    file's root and ``model_weights`` attributes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [json.loads(archive.read("metadata.json"))["keras_version"]]
    with h5py.File(path, "r") as h5:
        found = [h5.attrs["keras_version"], h5["model_weights"].attrs["keras_version"]]
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in found]


@pytest.mark.parametrize("suffix", ["keras", "h5"])
@pytest.mark.parametrize("source", ["small_keras3.keras", "small_keras3.h5", "small_tf_keras.keras",
                                    "small_tf_keras.h5"])
def test_written_files_say_which_keras_the_source_was(tmp_path: Path, source: str, suffix: str) -> None:
    keras_wrote = recorded_versions(FIXTURES / source)[0]
    assert keras_wrote.startswith("3." if "keras3" in source else "2.")
    model = bk.load_model(FIXTURES / source)
    assert model.keras_version == keras_wrote
    target = tmp_path / f"back.{suffix}"
    bk.save_model(model, target)
    assert recorded_versions(target) == [keras_wrote] * len(recorded_versions(target))
    again = bk.load_model(target)  # bnkit reads the version back: Keras 3's batch-norm note stays
    assert again.keras_version == keras_wrote and again.keras_notes == model.keras_notes
    with np.load(FIXTURES / f"{source.split('.')[0]}_ref.npz") as ref:
        np.testing.assert_allclose(again(torch.from_numpy(ref["x"])).detach().numpy(), ref["y"], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_torch_models_and_rebuilt_configs_are_written_as_tf_keras_2(tmp_path: Path, suffix: str) -> None:
    tf_keras = recorded_versions(FIXTURES / "small_tf_keras.h5")[0]
    bk.save_model(nn.Sequential(nn.Linear(3, 2)), tmp_path / f"torch.{suffix}", input_shape=(3,))
    assert recorded_versions(tmp_path / f"torch.{suffix}")[0] == tf_keras
    # a Keras 3 config rebuilt without its file: nothing recorded, and bnkit writes it in the
    # tf_keras-style dialect both read, so it says 2.x
    rebuilt = bk.build_from_config(bk.read_model_config(FIXTURES / "small_keras3.keras"))
    assert rebuilt.keras_version == ""
    bk.save_model(rebuilt, tmp_path / f"rebuilt.{suffix}")
    assert recorded_versions(tmp_path / f"rebuilt.{suffix}")[0] == tf_keras


def test_version_choice() -> None:
    """Keras 3 versions are kept; Keras 3's dialect without a recorded version says 3.x; any
    other recorded value (Keras 1, damaged) gives the 2.x layout bnkit writes."""
    plain = {"config": {"layers": [{"class_name": "Dense", "config": {"dtype": "float32"}}]}}
    policy = {"config": {"layers": [{"class_name": "Activation", "config": {"dtype": {"class_name": "DTypePolicy"}}}]}}
    assert written_version("3.15.1", plain) == "3.15.1"
    assert written_version("3.1.0rc1", plain) == "3.1.0rc1"
    assert written_version("", policy).startswith("3.")
    for other in ("2.21.0", "1", "1.2.2", "", "3.x; rm", "3." + "1" * 100 + "!"):
        assert written_version(other, plain) == written_version("", plain)
        assert written_version(other, plain).startswith("2.")
    assert written_version("2.21.0", policy).startswith("2.")
