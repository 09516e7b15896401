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
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    run_dir = next(tmp_path.iterdir())
    assert events[0] == {"event": "run", "run_dir": str(run_dir)}
    assert len(events) > 1 and all(event["event"] == "epoch" for event in events[1:])


def test_training_uses_the_variant_bn() -> None:
    from bnkit import BatchNormalization
    from bnkit.experiments.runner import build_model

    config = ExperimentConfig(width=0.0625)
    model = build_model(config, Variant("renorm"), (1, 32, 32), 10)
    bns = [m for m in model.modules() if isinstance(m, BatchNormalization)]
    assert len(bns) == 13 and all(bn.renorm for bn in bns)
    assert not any(isinstance(m, BatchNormalization) for m in build_model(config, Variant("none"), (1, 32, 32), 10).modules())
    assert torch.isfinite(model(torch.randn(2, 1, 32, 32))).all()


# ---- the results table and its footnotes ---------------------------------------------------
def _run_record(variant: str, seed: int, val: list[float], train: list[float] | None = None) -> "runner_module.RunRecord":
    train = train if train is not None else val
    history = [{"variant": variant, "seed": seed, "epoch": i + 1, "step": 10 * (i + 1), "train_loss": 1.0,
                "train_accuracy": t, "val_loss": 1.0, "val_accuracy": v, "epoch_time": 1.0, "time": float(i + 1)}
               for i, (v, t) in enumerate(zip(val, train))]
    return runner_module.RunRecord(variant, seed, history, "done")


def _table(records: list, momenta: dict | None = None) -> str:
    from bnkit.experiments.report import format_table, summarize

    return format_table(summarize(records, 0.9, momenta=momenta), 0.9)


def test_speedup_cells_say_when_the_baseline_never_reached_the_target() -> None:
    records = [_run_record("none", 0, [0.1, 0.1, 0.1]), _run_record("before_activation", 0, [0.5, 0.92, 0.95])]
    lines = _table(records).splitlines()
    assert lines[0].split("  ")[-1].strip() == "speed-up vs none"
    assert lines[2].endswith("-")  # the baseline's own row
    assert lines[3].endswith("none never reached 90%")
    partly = [_run_record("none", 0, [0.5, 0.95]), _run_record("none", 1, [0.5, 0.5]),
              _run_record("ghost", 0, [0.95, 0.96]), _run_record("ghost", 1, [0.95, 0.96])]
    assert _table(partly).splitlines()[3].endswith("none reached 90% in 1/2 seeds")
    reached = [_run_record("none", 0, [0.5, 0.5, 0.5, 0.95]), _run_record("ghost", 0, [0.5, 0.95, 0.96, 0.97])]
    assert _table(reached).splitlines()[3].endswith("2.00x")  # 4 epochs / 2 epochs
    no_baseline = _table([_run_record("ghost", 0, [0.95])])
    assert "speed-up" not in no_baseline


def test_a_lagging_bn_variant_gets_one_footnote_on_moving_averages() -> None:
    records = [_run_record("none", 0, [0.1, 0.1], train=[0.1, 0.1]),
               _run_record("before_activation", 0, [0.1, 0.9], train=[0.6, 0.95]),
               _run_record("after_activation", 0, [0.1, 0.9], train=[0.55, 0.95])]
    momenta = {"none": None, "before_activation": 0.99, "after_activation": 0.99}
    table = _table(records, momenta)
    notes = [line for line in table.splitlines() if line.startswith("* ")]
    assert len(notes) == 1
    assert "by 0.50 in epoch 1 for before_activation" in notes[0]  # 0.6 - 0.1, the larger gap
    assert "momentum 0.99" in notes[0] and "~100 steps" in notes[0] and "momentum 0.9" in notes[0]
    rows = table.splitlines()[2:5]
    assert rows[0].startswith("none ") and " *" not in rows[0]
    assert rows[1].startswith("before_activation *") and rows[2].startswith("after_activation *")
    # no hint: without BN (overfitting is not a moving-average lag), or a gap under the threshold
    assert "* " not in _table([_run_record("none", 0, [0.1], train=[0.9])], {"none": None})
    assert "* " not in _table([_run_record("ghost", 0, [0.8], train=[0.9])], {"ghost": 0.99})
    # momentum 0.9 already: the lag is explained, momentum 0.9 is not suggested again
    low = _table([_run_record("ghost", 0, [0.1], train=[0.9])], {"ghost": 0.9})
    assert "~10 steps" in low and "For short runs" not in low


@pytest.mark.parametrize("text, seeds", [("1", (0,)), ("3", (0, 1, 2)), ("0,1,2", (0, 1, 2)), ("5,", (5,)),
                                         (" 2, 7 ", (2, 7))])
def test_seeds_flag_takes_a_count_or_a_list(text: str, seeds: tuple) -> None:
    for command in ("demo", "train"):
        assert cli.parser().parse_args([command, "--seeds", text]).seeds == seeds


@pytest.mark.parametrize("text", ["0", "-1", "a", "1,1", "1,-2", ","])
def test_bad_seeds_are_usage_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "train"):
        with pytest.raises(SystemExit) as info:
            cli.parser().parse_args([command, "--seeds", text])
        assert info.value.code == 2
        assert repr(text) in capsys.readouterr().err


def test_demo_prints_the_run_folder_first_and_a_short_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import bnkit.experiments as experiments

    titles: list[str] = []
    original = experiments.plot_curves
    monkeypatch.setattr(experiments, "plot_curves",
                        lambda records, path, title="": titles.append(title) or original(records, path, title))
    code = cli.main(["demo", "--epochs", "1", "--seeds", "1", "--limit", "64", "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    run_dir = next(tmp_path.iterdir())
    assert out[0] == f"run folder: {run_dir}"
    assert titles == ["vgg16 (width 0.125) on digits, 1 seed"]
    model_lines = [line for line in out if line.startswith("  ") and "parameters" in line]
    assert [line.split()[0] for line in model_lines] == ["none", "before_activation", "after_activation"]
    assert "531,490 parameters" in model_lines[0] and "no BN" in model_lines[0]
    assert "BN before the activation in 13 layers, momentum 0.99" in model_lines[1]
    assert not any("Layer (type)" in line for line in out)  # the full table only with --summary
    assert "Layer (type)" in (run_dir / "summary.txt").read_text()
    table_at = next(i for i, line in enumerate(out) if line.startswith("variant "))
    assert table_at < len(out) - 1 and len(out) < 40


def test_summary_flag_prints_the_full_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--limit", "64", "--width", "0.0625", "--epochs", "1", "--variants", "ghost",
                     "--batch-size", "32", "--output-dir", str(tmp_path), "--quiet", "--summary"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Layer (type)" in out and "Total params:" in out and out.startswith("run folder: ")


def test_interrupt_names_how_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "evaluate", interrupted)
    code = cli.main(["train", "--limit", "64", "--width", "0.0625", "--epochs", "1", "--variants", "none",
                     "--batch-size", "32", "--output-dir", str(tmp_path), "--quiet", "--no-fast-allocator"])
    assert code == 130
    captured = capsys.readouterr()
    run_dir = next(tmp_path.iterdir())
    assert captured.out.splitlines()[0] == f"run folder: {run_dir}"
    assert "the run folder printed at the start" in captured.err
    code = cli.main(["train", "--resume", str(run_dir), "--quiet"])
    assert code == 130 and f"--resume {run_dir}`" in capsys.readouterr().err
