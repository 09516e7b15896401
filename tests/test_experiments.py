"""The experiment runner: artefacts, resume, divergence, configuration errors, the demo path."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bnkit import cli
from bnkit.experiments import ExperimentConfig, Variant, demo_config, load_config, run_experiment
from bnkit.experiments import runner as runner_module

TINY = dict(dataset="digits", limit=128, width=0.0625, epochs=2, seeds=(0,), batch_size=32,
            variants=(Variant("none"), Variant("before_activation")))


def _config(tmp_path: Path, **changes: object) -> ExperimentConfig:
    return ExperimentConfig(output_dir=str(tmp_path / "runs"), **{**TINY, **changes})  # type: ignore[arg-type]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _comparable(rows: list[dict]) -> list[tuple]:
    return [(r["variant"], r["seed"], r["epoch"], r["train_loss"], r["train_accuracy"], r["val_accuracy"])
            for r in rows]


def test_one_run_writes_every_artefact(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_experiment(_config(tmp_path, epochs=1), progress="quiet", echo=lines.append)
    run = result.run_dir
    for name in ("config.json", "summary.txt", "metrics.jsonl", "metrics.csv", "results.txt", "results.json",
                 "curves.png", "checkpoints/none-seed0.pt", "checkpoints/before_activation-seed0.pt"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _metrics(run)
    assert [(r["variant"], r["epoch"]) for r in rows] == [("none", 1), ("before_activation", 1)]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and math.isfinite(r["train_loss"]) for r in rows)
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("variant,seed,epoch,step,train_loss")
    assert ExperimentConfig.from_dict(json.loads((run / "config.json").read_text())) == _config(tmp_path, epochs=1)
    assert "non-trainable" in (run / "summary.txt").read_text()
    assert any("final val acc" in line for line in lines)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    second = run_experiment(_config(tmp_path, epochs=1), progress="quiet", echo=lambda _: None)
    assert second.run_dir != run  # a new folder; the earlier run is untouched
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_after_interruption_gives_identical_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, epochs=3, dropout=0.25)
    full = run_experiment(config, progress="quiet", echo=lambda _: None)

    original = runner_module.evaluate
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object) -> tuple[float, float]:
        calls["n"] += 1
        if calls["n"] == 4:  # during the second variant's first epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, progress="quiet", echo=lambda _: None)
    monkeypatch.setattr(runner_module, "evaluate", original)
    partial_dir = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert partial_dir != full.run_dir
    assert len(_metrics(partial_dir)) == 3  # the consistent state at the interruption
    resumed = run_experiment(resume=partial_dir, progress="quiet", echo=lambda _: None)
    assert _comparable(_metrics(resumed.run_dir)) == _comparable(_metrics(full.run_dir))


def test_diverging_variant_stops_and_others_continue(tmp_path: Path) -> None:
    config = _config(tmp_path, variants=(Variant("none"), Variant("before_activation")), learning_rate=10.0,
                     epochs=3)
    messages: list[str] = []
    result = run_experiment(config, progress="quiet", echo=messages.append)
    statuses = {r.variant: r.status for r in result.records}
    assert "diverged" in statuses.values()
    diverged = next(r for r in result.records if r.status == "diverged")
    assert "loss became" in diverged.message
    assert "diverged" in result.table


@pytest.mark.parametrize("data, fragment", [
    ({"epochs": 0}, "`epochs`"),
    ({"learning_rate": -1}, "`learning_rate`"),
    ({"optimizer": "rmsprop"}, "'rmsprop'"),
    ({"variants": ["before"]}, "'before'"),
    ({"variants": [{"batch_norm": "ghost", "virtual_batch_size": 0}]}, "`virtual_batch_size`"),
    ({"seeds": [0, 0]}, "`seeds`"),
    ({"epoch": 3}, "Unknown configuration keys ['epoch']"),
    ({"variants": [{"batch_norm": "none", "mom": 0.9}]}, "Unknown variant keys ['mom']"),
    ({"width": "wide"}, "`width`"),
])
def test_configuration_errors(data: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_dict(data)
    assert fragment in str(info.value)


def test_config_files(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('epochs = 4\nseeds = [1, 2]\n[[variants]]\nbatch_norm = "none"\n'
                    '[[variants]]\nbatch_norm = "ghost"\nvirtual_batch_size = 4\n')
    config = load_config(path)
    assert config.epochs == 4 and config.seeds == (1, 2)
    assert config.variants[1].bn_kwargs()["virtual_batch_size"] == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(ValueError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ValueError, match="'.ini'"):
        (tmp_path / "x.ini").write_text("")
        load_config(tmp_path / "x.ini")


def test_demo_code_path_with_a_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["demo", "--epochs", "1", "--seeds", "1", "--limit", "96", "--output-dir", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "final val acc" in out and "curves.png" in out
    run_dir = next(tmp_path.iterdir())
    variants = {r["variant"] for r in _metrics(run_dir)}
    assert variants == {"none", "before_activation", "after_activation"}
    assert demo_config().model == "vgg16" and demo_config().variants[0].batch_norm == "none"


def test_json_progress_prints_only_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--limit", "64", "--width", "0.0625", "--epochs", "1", "--variants", "ghost",
                     "--batch-size", "32", "--output-dir", str(tmp_path), "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(json.loads(line)["event"] == "epoch" for line in lines)


def test_training_uses_the_variant_bn() -> None:
    from bnkit import BatchNormalization
    from bnkit.experiments.runner import build_model

    config = ExperimentConfig(width=0.0625)
    model = build_model(config, Variant("renorm"), (1, 32, 32), 10)
    bns = [m for m in model.modules() if isinstance(m, BatchNormalization)]
    assert len(bns) == 13 and all(bn.renorm for bn in bns)
    assert not any(isinstance(m, BatchNormalization) for m in build_model(config, Variant("none"), (1, 32, 32), 10).modules())
    assert torch.isfinite(model(torch.randn(2, 1, 32, 32))).all()
