"""``bnkit convert``: Keras files <-> checkpoints, through ``add_convert_parser``."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bnkit
import bnkit.keras as bk
from bnkit import checkpoint
from bnkit.keras.cli import add_convert_parser, input_shapes, load_checkpoint_model

from .oracle_client import oracle_env

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


# ---- `python -m bnkit convert` with --summary / --fold / --check, in subprocesses --------------

SRC = Path(__file__).resolve().parents[1] / "src"
JOBS = FIXTURES / "tools_jobs.py"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "bnkit", "convert", *argv], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _totals(text: str, label: str) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) from the lines after ``label``."""
    part = text[text.index(label):]
    found = [int(re.search(rf"{kind} params: ([\d,]+)", part).group(1).replace(",", ""))  # type: ignore[union-attr]
             for kind in ("Total", "Trainable", "Non-trainable")]
    return found[0], found[1], found[2]


def _keras_counts(ref: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """Keras' counts from the weights Keras itself wrote into the fixture's npz."""
    weights = {key: value.size for key, value in ref.items() if key.startswith("w/")}
    statistics = sum(size for key, size in weights.items() if key.endswith(("moving_mean", "moving_variance")))
    return sum(weights.values()), sum(weights.values()) - statistics, statistics


@pytest.mark.slow
def test_summary_and_check_from_the_command_line(tmp_path: Path) -> None:
    ref = _ref()
    done = _run(str(FIXTURES / "small_tf_keras.h5"), str(tmp_path / "small.pt"), "--summary", "--check")
    assert done.returncode == 0, done.stderr
    total, trainable, statistics = _keras_counts(ref)
    assert _totals(done.stdout, "Keras convention") == (total, trainable, statistics) == (323, 315, 8)
    assert _totals(done.stdout, "PyTorch convention") == (trainable, trainable, 0)
    # Keras' row: Conv2D(4, 3, padding="same") on 8x8x3 gives (None, 8, 8, 4) in Keras.
    assert re.search(r"\nconv \(Conv2D\) +\(None, 8, 8, 4\) +112", done.stdout), done.stdout
    assert re.search(r"check: small.pt reloaded vs the model read on random input\(s\) \(2, 8, 8, 3\): "
                     r"max relative difference 0 \(limit 1e-05\): ok", done.stdout), done.stdout
    done = _run(str(tmp_path / "small.pt"), str(tmp_path / "back.keras"), "--fold", "--check", "--rtol", "0")
    assert done.returncode == 0, done.stderr
    assert "folded 0 of 1 batch norms" in done.stdout and "bn: " in done.stdout  # conv -> relu -> bn: kept
    np.testing.assert_allclose(bk.load_model(tmp_path / "back.keras")(torch.from_numpy(ref["x"])).detach().numpy(),
                               ref["y"], rtol=1e-5, atol=1e-6)
    done = _run(str(FIXTURES / "small_tf_keras.h5"), str(tmp_path / "x.keras"), "--check", "--input-shape", "8,8")
    assert done.returncode == 2 and not (tmp_path / "x.keras").exists()
    assert done.stderr == ("bnkit convert: error: --input-shape must fit the model's input shape (8, 8, 3) "
                           "(None: any size); received 8,8\n")


def _folding_model(tmp_path: Path) -> Path:
    """A Keras file written by bnkit: conv -> BN -> relu -> pool -> flatten -> dense -> BN."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 5),
                                torch.nn.BatchNorm1d(5))
    with torch.no_grad():
        for bn in (model[1], model[6]):
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.5)
    bk.save_model(model.eval(), tmp_path / "folding.keras", input_shape=(3, 8, 8))
    return tmp_path / "folding.keras"


@pytest.mark.slow
def test_fold_writes_files_without_the_folded_batch_norms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _folding_model(tmp_path)
    x = torch.randn(3, 8, 8, 3)
    original = bk.load_model(source)
    for suffix in ("h5", "pt", "keras"):
        argv = (str(source), str(tmp_path / f"folded.{suffix}"), "--fold", "--check")
        if suffix == "keras":  # in this process, to save a start of torch
            assert _convert(*argv) == 0
            out = capsys.readouterr().out
        else:
            done = _run(*argv)
            assert done.returncode == 0, done.stderr
            out = done.stdout
        assert "folded 2 of 2 batch norms" in out, out
        assert out.count(": ok") == 2, out  # vs the model read and vs the folded model
        folded = (load_checkpoint_model(tmp_path / "folded.pt")[0] if suffix == "pt"
                  else bk.load_model(tmp_path / f"folded.{suffix}"))
        classes = [layer["class_name"] for layer in folded.keras_config["config"]["layers"]]
        assert "BatchNormalization" not in classes, classes
        torch.testing.assert_close(folded(x), original(x), rtol=1e-5, atol=1e-6)
    # Folding rounds in float32: a zero tolerance fails the check, and the exit status says so.
    assert _convert(str(source), str(tmp_path / "strict.keras"), "--fold", "--check", "--rtol", "0") == 1
    out = capsys.readouterr().out
    difference = re.search(r"model read .*difference (\S+)", out)
    assert "FAILED" in out and difference is not None and float(difference.group(1)) > 0, out


@pytest.mark.slow
def test_torch_checkpoint_to_keras_with_summary_fold_and_check(tmp_path: Path) -> None:
    kwargs = {"input_shape": [3, 32, 32], "width": 0.125, "classes": 4, "batch_norm": "before_activation"}
    architecture = {"builder": "vgg16", "kwargs": kwargs, "transforms": []}
    model = checkpoint.build(architecture)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, bnkit.BatchNormalization):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    checkpoint.save_checkpoint(tmp_path / "vgg.pt", model.eval(), architecture)
    done = _run(str(tmp_path / "vgg.pt"), str(tmp_path / "vgg.h5"), "--summary", "--fold", "--check")
    assert done.returncode == 0, done.stderr
    parameters = sum(p.numel() for p in model.parameters())
    statistics = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert _totals(done.stdout, "Keras convention") == (parameters + statistics, parameters, statistics)
    assert "folded 13 of 13 batch norms" in done.stdout and done.stdout.count(": ok") == 2, done.stdout
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(bk.load_model(tmp_path / "vgg.h5")(x.permute(0, 2, 3, 1)), model(x),
                               rtol=1e-4, atol=1e-6)


def test_channels_first_checkpoint_with_summary_fold_and_check(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = _folding_model(tmp_path)
    assert _convert(str(source), str(tmp_path / "cf.pt"), "--data-format", "channels_first", "--summary", "--fold",
                    "--check") == 0
    out = capsys.readouterr().out
    assert "folded 2 of 2 batch norms" in out and "channels_first interface" in out, out
    assert out.count("on random input(s) (2, 3, 8, 8)") == 2 and out.count(": ok") == 2, out
    model, architecture = load_checkpoint_model(tmp_path / "cf.pt")
    assert architecture["data_format"] == "channels_first" and model.data_format == "channels_first"
    x = torch.randn(2, 8, 8, 3)
    torch.testing.assert_close(model(x.permute(0, 3, 1, 2)), bk.load_model(source)(x), rtol=1e-5, atol=1e-6)
    # Back to Keras: the file is Keras' layout; --check reloads it with the checkpoint's interface.
    assert _convert(str(tmp_path / "cf.pt"), str(tmp_path / "back.h5"), "--check") == 0
    assert "(2, 3, 8, 8): max relative difference 0 " in capsys.readouterr().out
    assert bk.load_model(tmp_path / "back.h5").data_format == "channels_last"
    with pytest.raises(ValueError, match="--data-format sets the interface of a checkpoint written from a Keras file"):
        _convert(str(FIXTURES / "small_tf_keras.h5"), str(tmp_path / "x.keras"), "--data-format", "channels_first")


@pytest.mark.parametrize(("argv", "error", "message"), [
    (["--rtol", "1e-3"], ValueError, "--rtol is the limit of --check; received --rtol 0.001 without --check"),
    (["--check", "--input-shape", "9,9,3"], ValueError,
     r"--input-shape must fit the model's input shape \(8, 8, 3\) \(None: any size\); received 9,9,3"),
])
def test_bad_combinations(tmp_path: Path, argv: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _convert(str(FIXTURES / "small_tf_keras.h5"), str(tmp_path / "out.keras"), *argv)
    assert not (tmp_path / "out.keras").exists()


def test_output_must_differ_from_input(tmp_path: Path) -> None:
    source = tmp_path / "small.h5"
    source.write_bytes((FIXTURES / "small_tf_keras.h5").read_bytes())
    with pytest.raises(ValueError, match="OUTPUT must differ from INPUT"):
        _convert(str(source), str(source), "--force")
    assert source.read_bytes() == (FIXTURES / "small_tf_keras.h5").read_bytes()


def test_open_input_sizes_need_input_shape() -> None:
    model = bk.load_model(FIXTURES / "small_tf_keras.h5")
    model.keras_config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, None, None, 3]
    source = Path("open.h5")
    with pytest.raises(ValueError, match=r"open.h5: the model's input shape \(None, None, 3\) leaves sizes open"):
        input_shapes(model, None, source)
    assert input_shapes(model, (8, 8, 3), source) == [(8, 8, 3)]
    with pytest.raises(ValueError, match=r"input shape \(None, None, 3\) \(None: any size\); received 8,8,4"):
        input_shapes(model, (8, 8, 4), source)


def _keras(*argv: str) -> None:
    proc = subprocess.run([sys.executable, str(JOBS), *argv], env=oracle_env("tf_keras"), capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"tf_keras ({argv[0]}) failed ({proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False)


#: tools_jobs recipes -> BNs `--fold` folds (see tests/keras_fixtures/tools_jobs.py).
RECIPES = {"residual": 4, "mobilenet_like": 7, "se_ops": 2, "text_lstm": 1, "mobilenet_v2": 52}


@pytest.mark.oracle
@pytest.mark.slow
def test_keras_loads_what_convert_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tf_keras builds the models (Keras' MobileNetV2 among them); `bnkit convert` (--fold or not)
    writes them back; tf_keras loads those files with Keras' outputs; --summary prints Keras'
    own counts."""
    _keras("build", str(tmp_path))
    counts = json.loads((tmp_path / "counts.json").read_text(encoding="utf-8"))
    written = []
    for recipe, folds in RECIPES.items():
        out = tmp_path / f"{recipe}.folded.keras"
        done = _run(str(tmp_path / f"{recipe}.h5"), str(out), "--summary", "--fold", "--check")
        assert done.returncode == 0, done.stderr
        want = counts[recipe]
        assert _totals(done.stdout, "Keras convention") == (want["total"], want["trainable"], want["non_trainable"])
        assert _totals(done.stdout, "PyTorch convention") == (want["trainable"], want["trainable"], 0)
        assert f"folded {folds} of" in done.stdout and done.stdout.count(": ok") == 2, done.stdout
        for target, fold in ((f"{recipe}.folded.h5", ("--fold",)), (f"{recipe}.plain.h5", ())):
            assert _convert(str(tmp_path / f"{recipe}.keras"), str(tmp_path / target), "--check", *fold) == 0
        capsys.readouterr()
        written.append([tmp_path / f"{recipe}.{kind}" for kind in ("folded.keras", "folded.h5", "plain.h5")])
    job = {str(path): str(tmp_path / f"{recipe}.npz") for recipe, files in zip(RECIPES, written) for path in files}
    (tmp_path / "predict.json").write_text(json.dumps(job), encoding="utf-8")
    _keras("predict", str(tmp_path / "predict.json"))
    for recipe, files in zip(RECIPES, written):
        with np.load(tmp_path / f"{recipe}.npz") as data:
            y = data["y"]
        for path in files:
            got = np.load(f"{path}.out.npy")
            assert np.abs(got - y).max() / np.abs(y).max() <= 1e-5, path.name
