"""Experiments that show what batch norm does to training (``bnkit train`` / ``bnkit demo``)."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .._files import remove_stale_staging
from ..data import Dataset
from . import parallel
from .config import BN_VARIANTS, ExperimentConfig, Variant, load_config
from .progress import Progress, make_progress
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

    Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) every process calls this:
    it initialises the process group (gloo on CPU, NCCL with ``device="cuda"``), trains with
    DistributedDataParallel on its share of every global batch (``batch_size`` stays the global
    batch) and destroys the group at the end; rank 0 alone reports and writes the run folder
    (``config.json`` then records ``world_size``).  An already initialised process group is used
    as it is and left alone.
    """
    from ..data import load_dataset

    processes = parallel.from_environment()
    recorded_world: int | None = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a bnkit run folder: expected {run_dir / 'config.json'}")
        stored = _read_run_config(run_dir / "config.json")
        config = ExperimentConfig.from_dict(stored)
        for folder in (run_dir, run_dir / "checkpoints"):  # an interrupted write leaves its staging folder
            remove_stale_staging(folder)
        recorded_world = stored.get("world_size") if isinstance(stored, dict) else None
    else:
        config = config or ExperimentConfig()
        _remove_stale_in_runs(Path(config.output_dir))
    parallel.check_config(config, processes.world_size)
    device = processes.device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    # Deep nets without BN produce denormal floats, which x86 CPUs process 10-30x slower;
    # flushing them to zero (as GPUs do) keeps the time comparison about BN, not the CPU.
    torch.set_flush_denormal(True)
    data = load_dataset(config.dataset, image_size=config.image_size, limit=config.limit)
    parallel.check_config(config, processes.world_size, len(data.x_train))
    config.check_training_set(len(data.x_train))
    started = parallel.start(processes, device)
    try:
        result = _run(config, Path(resume) if resume is not None else None, recorded_world, data, processes,
                      progress, echo)
    except BaseException:
        parallel.stop(started, wait=False)  # another rank may be gone: waiting for it could hang
        raise
    parallel.stop(started)
    return result


def _read_run_config(path: Path) -> object:
    """A run folder's ``config.json``, parsed; a broken one is a ValueError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: expected the JSON configuration this run folder was started with; found a "
                         f"broken file ({error})") from None


def _remove_stale_in_runs(output_dir: Path, limit: int = 1000) -> None:
    """Remove staging folders that killed runs left in the run folders of ``output_dir`` (their writer is gone)."""
    try:
        runs = [entry for _, entry in zip(range(limit), output_dir.iterdir()) if entry.is_dir()]
    except OSError:
        return
    for run in runs:
        for folder in (run, run / "checkpoints"):
            remove_stale_staging(folder)


def _run(config: ExperimentConfig, run_dir: Path | None, recorded_world: int | None, data: Dataset,
         processes: parallel.Processes, progress: str, echo: Callable[[str], None]) -> ExperimentResult:
    main = processes.is_main
    if run_dir is None:
        created = new_run_dir(config.output_dir, config.name) if main else None
        run_dir = Path(parallel.broadcast_object(str(created) if created else None, processes))
        record = {**config.to_dict(), "world_size": processes.world_size}
        if main:
            atomic_write(run_dir / "config.json",
                         lambda p: p.write_text(json.dumps(record, indent=2), encoding="utf-8"))
    reporter = make_progress(progress) if main else Progress()  # the other ranks stay silent
    if main and recorded_world is not None and recorded_world != processes.world_size:
        reporter.message(f"note: {run_dir} was started on {recorded_world} process(es) and continues on "
                         f"{processes.world_size}; the global batches stay the same"
                         + ("" if config.sync_bn else ", but without --sync-bn the BN statistics change"))
    if main:
        summary_text = _summaries(config, data.input_shape, data.num_classes)
        atomic_write(run_dir / "summary.txt", lambda p: p.write_text(summary_text, encoding="utf-8"))
        if progress == "bar":
            echo(summary_text)
    records = [RunRecord(v.name, seed) for v in config.variants for seed in config.seeds]
    for record in records:
        variant = next(v for v in config.variants if v.name == record.variant)
        train_variant(config, variant, record.seed, data, run_dir, reporter, record,
                      on_epoch=lambda _: write_metrics(run_dir, records), processes=processes)
    results = summarize(records, config.target_accuracy)
    table = format_table(results, config.target_accuracy)
    plot = run_dir / "curves.png"
    if main:
        write_metrics(run_dir, records)
        title = f"{config.model} (width {config.width}) on {config.dataset}, {len(config.seeds)} seeds"
        if processes.distributed:
            title += f", {processes.world_size} processes" + (" (sync BN)" if config.sync_bn else "")
        plot = plot_curves(records, plot, title=title)
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
