"""The checkpoint commands: summary, build, add-bn, fold (and never overwriting without --force)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import bnkit
from bnkit import checkpoint, cli

SMALL = ["--input-shape", "3,32,32", "--width", "0.125", "--classes", "10"]


def test_summary_command_prints_keras_and_torch_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summary", "vgg16", "--batch-norm", "after_activation", "--input-shape", "3,224,224"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 138,374,440" in out and "Non-trainable params: 8,448" in out
    assert cli.main(["summary", "vgg16", "--batch-norm", "after_activation", "--style", "torch"]) == 0
    assert "Total params: 138,365,992" in capsys.readouterr().out


def test_build_add_bn_fold_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain, with_bn, folded = tmp_path / "plain.pt", tmp_path / "bn.pt", tmp_path / "folded.pt"
    assert cli.main(["build", "vgg16", str(plain), *SMALL]) == 0
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    assert cli.main(["add-bn", str(plain), str(with_bn), "--calibration", str(tmp_path / "calib.npz"),
                     "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "block1_conv1_bn" in out and "skipped predictions: output layer" in out
    model_plain, _ = checkpoint.load_checkpoint(plain)
    model_bn, architecture = checkpoint.load_checkpoint(with_bn)
    assert architecture["transforms"][0]["op"] == "insert_batch_norm"
    assert sum(isinstance(m, bnkit.BatchNormalization) for m in model_bn.modules()) == 15  # 13 conv + fc1, fc2
    inputs = torch.from_numpy(x[:4])
    with torch.no_grad():
        expected = model_plain.eval()(inputs)
        torch.testing.assert_close(model_bn.eval()(inputs), expected, rtol=1e-5, atol=1e-6)
    assert cli.main(["fold", str(with_bn), str(folded)]) == 0
    model_folded, _ = checkpoint.load_checkpoint(folded)
    assert not any(isinstance(m, bnkit.BatchNormalization) for m in model_folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(model_folded.eval()(inputs), expected, rtol=1e-5, atol=1e-6)


def test_outputs_are_never_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain, out = tmp_path / "plain.pt", tmp_path / "out.pt"
    assert cli.main(["build", "vgg16", str(plain), *SMALL]) == 0
    out.write_bytes(b"precious")
    assert cli.main(["add-bn", str(plain), str(out)]) == 2
    assert cli.main(["fold", str(plain), str(out)]) == 2
    assert cli.main(["build", "vgg16", str(out), *SMALL]) == 2
    assert out.read_bytes() == b"precious"
    assert "--force" in capsys.readouterr().err
    assert cli.main(["add-bn", str(plain), str(out), "--force"]) == 0
    assert checkpoint.load_checkpoint(out)[1]["transforms"]


def test_bad_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fold", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["fold", str(tmp_path / "junk.pt"), str(tmp_path / "x.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    assert cli.main(["fold", str(tmp_path / "other.pt"), str(tmp_path / "x.pt")]) == 2
    assert "bnkit checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["summary", "vgg16", "--input-shape", "3,x,4"])
    assert not (tmp_path / "x.pt").exists()


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"bnkit {bnkit.__version__}\n"


def _subcommand(name: str) -> argparse.ArgumentParser:
    root = cli.parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("command", ["train", "demo"])
def test_every_option_has_a_help_text_that_states_its_default(command: str) -> None:
    sub = _subcommand(command)
    options = [a for a in sub._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
    assert len(options) >= (24 if command == "train" else 8)
    for action in options:
        assert action.help and action.help.strip(), action.option_strings
        assert "(default: " in action.help, (action.option_strings, action.help)
    text = sub.format_help()  # every %-expansion formats
    assert "(default: runs)" in text


def test_train_help_defaults_are_the_configuration_defaults() -> None:
    from bnkit.experiments import ExperimentConfig

    base = ExperimentConfig()
    helps = {a.dest: a.help for a in _subcommand("train")._actions}
    for key in ("epochs", "batch_size", "learning_rate", "optimizer", "schedule", "model", "width", "dataset",
                "target_accuracy", "image_size", "dropout", "device", "output_dir", "name"):
        assert f"(default: {getattr(base, key)})" in helps[key], key
    assert "(default: none,before_activation,after_activation)" in helps["variants"]
    assert "(default: 1, i.e. seed 0)" in helps["seeds"]
    assert "(default: 3, i.e. seeds 0,1,2)" in {a.dest: a.help for a in _subcommand("demo")._actions}["seeds"]


def test_add_bn_include_output_and_checkpoints_from_before_the_option(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    plain, with_bn = tmp_path / "plain.pt", tmp_path / "bn.pt"
    assert cli.main(["build", "vgg16", str(plain), *SMALL]) == 0
    assert cli.main(["add-bn", str(plain), str(with_bn), "--include-output"]) == 0
    assert "predictions_bn" in capsys.readouterr().out
    model, architecture = checkpoint.load_checkpoint(with_bn)
    assert architecture["transforms"][0]["include_output"] is True
    assert sum(isinstance(m, bnkit.BatchNormalization) for m in model.modules()) == 16
    # a checkpoint written before the option (no include_output key) had a BN after the logits: it still loads
    state = torch.load(with_bn, weights_only=False)
    del state["architecture"]["transforms"][0]["include_output"]
    torch.save(state, tmp_path / "old.pt")
    old, _ = checkpoint.load_checkpoint(tmp_path / "old.pt")
    assert "predictions_bn" in dict(old.named_modules())
