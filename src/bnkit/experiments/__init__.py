"""Experiments that show what batch norm does to training (``bnkit train`` / ``bnkit demo``)."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import BN_VARIANTS, ExperimentConfig, Variant, load_config
from .progress import make_progress
from .report import VariantResult, format_table, plot_curves, summarize
from .runner import RunRecord, atomic_write, build_model, train_variant, write_metrics

__all__ = [
    "BN_VARIANTS", "ExperimentConfig", "ExperimentResult", "Variant", "demo_config", "load_config",
    "new_run_dir", "run_experiment",
]


@dataclass(frozen=True)
class ExperimentResult:
    run_dir: Path
    records: list[RunRecord]
    results: list[VariantResult]
    table: str
    plot: Path


def demo_config(**overrides: object) -> ExperimentConfig:
    """``bnkit demo``: a narrow VGG16 (13 conv layers) on the digits, no BN vs BN before/after."""
    config = ExperimentConfig(
        name="demo", dataset="digits", model="vgg16", width=0.125, batch_size=32, optimizer="sgd",
        learning_rate=0.02, sgd_momentum=0.9, epochs=8, seeds=(0, 1, 2), target_accuracy=0.9,
        variants=(Variant("none"), Variant("before_activation"), Variant("after_activation")),
    )
    return config.replace(**overrides)


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """A fresh folder ``<output_dir>/<name>-<timestamp>``; never an existing one."""
    root = Path(output_dir)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        candidate = root / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a new run folder under {root}")


def run_experiment(
    config: ExperimentConfig | None = None, *, resume: str | Path | None = None, progress: str = "bar",
    echo: Callable[[str], None] = print,
) -> ExperimentResult:
    """Train every variant x seed of ``config`` in a new run folder (or continue ``resume``).

    Writes ``config.json``, ``summary.txt``, ``metrics.jsonl``/``metrics.csv`` (after every
    epoch), ``checkpoints/<variant>-seed<k>.pt``, ``results.txt``/``results.json`` and
    ``curves.png``.  ``echo`` receives the human-readable report lines.
    """
    from ..data import load_dataset

    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a bnkit run folder: expected {run_dir / 'config.json'}")
        config = ExperimentConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    else:
        config = config or ExperimentConfig()
        run_dir = new_run_dir(config.output_dir, config.name)
        atomic_write(run_dir / "config.json", lambda p: p.write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8"))
    if config.threads:
        torch.set_num_threads(config.threads)
    # Deep nets without BN produce denormal floats, which x86 CPUs process 10-30x slower;
    # flushing them to zero (as GPUs do) keeps the time comparison about BN, not the CPU.
    torch.set_flush_denormal(True)
    data = load_dataset(config.dataset, image_size=config.image_size, limit=config.limit)
    reporter = make_progress(progress)
    summary_text = _summaries(config, data.input_shape, data.num_classes)
    atomic_write(run_dir / "summary.txt", lambda p: p.write_text(summary_text, encoding="utf-8"))
    if progress == "bar":
        echo(summary_text)
    records = [RunRecord(v.name, seed) for v in config.variants for seed in config.seeds]
    for record in records:
        variant = next(v for v in config.variants if v.name == record.variant)
        train_variant(config, variant, record.seed, data, run_dir, reporter, record,
                      on_epoch=lambda _: write_metrics(run_dir, records))
    write_metrics(run_dir, records)
    results = summarize(records, config.target_accuracy)
    table = format_table(results, config.target_accuracy)
    plot = plot_curves(records, run_dir / "curves.png",
                       title=f"{config.model} (width {config.width}) on {config.dataset}, {len(config.seeds)} seeds")
    atomic_write(run_dir / "results.txt", lambda p: p.write_text(table + "\n", encoding="utf-8"))
    atomic_write(run_dir / "results.json", lambda p: p.write_text(
        json.dumps([r.__dict__ for r in results], indent=2), encoding="utf-8"))
    if progress != "json":
        echo(table)
        echo(f"\nrun folder: {run_dir}\nplot: {plot}")
    return ExperimentResult(run_dir, records, results, table, plot)


def _summaries(config: ExperimentConfig, input_shape: tuple[int, int, int], classes: int) -> str:
    """Keras- and torch-convention parameter counts of every variant's model, side by side."""
    from ..summary import summary

    parts = []
    for variant in config.variants:
        model = build_model(config, variant, input_shape, classes)
        keras = summary(model, input_shape, style="keras")
        torch_style = summary(model, input_shape, style="torch")
        parts.append(f"variant {variant.name}: Keras convention {keras.total:,} parameters "
                     f"({keras.non_trainable:,} non-trainable: moving mean/variance); "
                     f"PyTorch convention {torch_style.total:,} parameters")
    bn_variant = next((v for v in config.variants if v.placement), config.variants[0])
    table = str(summary(build_model(config, bn_variant, input_shape, classes), input_shape, style="keras"))
    return f"Model of variant '{bn_variant.name}':\n{table}\n\n" + "\n".join(parts) + "\n"
