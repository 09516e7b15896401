"""``bnkit convert``: Keras files <-> checkpoints, through ``add_convert_parser``."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import bnkit.keras as bk
from bnkit import checkpoint
from bnkit.keras.cli import add_convert_parser, load_checkpoint_model

FIXTURES = Path(__file__).resolve().parent / "keras_fixtures"


def _convert(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bnkit")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *argv])
    return int(args.run(args))


def _ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "small_tf_keras_ref.npz") as data:
        return {key: data[key] for key in data.files}


def test_keras_to_checkpoint_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _ref()
    assert _convert(str(FIXTURES / "small_tf_keras.h5"), str(tmp_path / "small.pt")) == 0
    out = capsys.readouterr().out
    assert "Keras model 'small': 6 layers" in out and "wrote" in out and "Conv2D x1" in out
    payload = torch.load(tmp_path / "small.pt", weights_only=True)
    assert payload["format"] == checkpoint.FORMAT and payload["architecture"]["builder"] == "keras"
    assert payload["architecture"]["config"]["class_name"] == "Model"
    model, _ = load_checkpoint_model(tmp_path / "small.pt")
    y = model.eval()(torch.from_numpy(ref["x"])).detach().numpy()
    np.testing.assert_allclose(y, ref["y"], rtol=1e-5, atol=1e-6)
    for suffix in ("keras", "h5"):
        assert _convert(str(tmp_path / "small.pt"), str(tmp_path / f"back.{suffix}")) == 0
        loaded = bk.load_model(tmp_path / f"back.{suffix}")
        np.testing.assert_allclose(loaded(torch.from_numpy(ref["x"])).detach().numpy(), ref["y"], rtol=1e-5, atol=1e-6)


def test_between_keras_formats_and_existing_outputs(tmp_path: Path) -> None:
    target = tmp_path / "small.keras"
    assert _convert(str(FIXTURES / "small_keras3.h5"), str(target)) == 0
    with pytest.raises(FileExistsError, match="--force"):
        _convert(str(FIXTURES / "small_keras3.h5"), str(target))
    assert _convert(str(FIXTURES / "small_keras3.h5"), str(target), "--force") == 0
    with pytest.raises(ValueError, match="OUTPUT must end in"):
        _convert(str(FIXTURES / "small_keras3.h5"), str(tmp_path / "x.onnx"))
    with pytest.raises(FileNotFoundError):
        _convert(str(tmp_path / "missing.h5"), str(tmp_path / "y.pt"))


def test_vgg_checkpoint_to_keras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kwargs = {"input_shape": [3, 32, 32], "width": 0.125, "classes": 4, "batch_norm": "after_activation"}
    architecture = {"builder": "vgg16", "kwargs": kwargs, "transforms": []}
    model = checkpoint.build(architecture).eval()
    checkpoint.save_checkpoint(tmp_path / "vgg.pt", model, architecture)
    assert _convert(str(tmp_path / "vgg.pt"), str(tmp_path / "vgg.keras")) == 0
    assert "wrote" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(bk.load_model(tmp_path / "vgg.keras")(x.permute(0, 2, 3, 1)), model(x),
                               rtol=1e-5, atol=1e-6)
