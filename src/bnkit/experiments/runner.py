"""The training loop behind ``bnkit train`` and ``bnkit demo``.

One run = every variant x every seed of an :class:`ExperimentConfig`, trained one after
the other in a run folder.  After every epoch each (variant, seed) writes its checkpoint
atomically (model, optimizer, scheduler, history), and the metrics files are rewritten
from all histories, so a run killed at any moment can be resumed and ends with the same
metrics as an uninterrupted one: shuffling and dropout are seeded by (seed, epoch).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import apply_constraints, models, regularization_loss
from .._files import write_atomically
from ..data import Dataset
from .config import ExperimentConfig, Variant
from .progress import Progress

__all__ = ["RunRecord", "build_model", "train_variant", "atomic_write", "checkpoint_path"]


@dataclass
class RunRecord:
    """The history of one (variant, seed): a dict of metrics per finished epoch."""

    variant: str
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"  # pending | done | diverged
    message: str = ""


def build_model(config: ExperimentConfig, variant: Variant, input_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The VGG of ``config`` with ``variant``'s batch norm; logits out (no softmax)."""
    return models.vgg(
        config.model, input_shape=input_shape, classes=classes, width=config.width,
        batch_norm=variant.placement, batch_norm_dense=config.batch_norm_dense and variant.placement is not None,
        dropout=config.dropout, classifier_activation=None, bn_kwargs=variant.bn_kwargs() if variant.placement else None,
    )


def _optimizer(config: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.sgd_momentum,
                           weight_decay=config.weight_decay)


def _schedule(config: ExperimentConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        if config.schedule == "step":  # x0.1 at 50% and 75% of training
            return 0.1 ** sum(step >= total_steps * f for f in (0.5, 0.75))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def checkpoint_path(run_dir: Path, variant: str, seed: int) -> Path:
    return run_dir / "checkpoints" / f"{variant}-seed{seed}.pt"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path``'s folder if needed, then :func:`bnkit._files.write_atomically`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    usable = n - n % batch_size if n >= batch_size else n  # drop the ragged last batch (ghost BN needs V | B)
    for start in range(0, usable, batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return loss / len(x), correct / len(x)


def train_variant(
    config: ExperimentConfig, variant: Variant, seed: int, data: Dataset, run_dir: Path,
    progress: Progress, record: RunRecord, on_epoch: Callable[[RunRecord], None],
) -> RunRecord:
    """Train one (variant, seed), resuming from its checkpoint when there is one."""
    torch.manual_seed(seed)
    model = build_model(config, variant, data.input_shape, data.num_classes)
    optimizer = _optimizer(config, model)
    n = len(data.x_train)
    steps_per_epoch = max(1, n // config.batch_size) if n >= config.batch_size else 1
    scheduler = _schedule(config, optimizer, steps_per_epoch * config.epochs)
    path = checkpoint_path(run_dir, variant.name, seed)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        record.history, record.status, record.message = state["history"], state["status"], state["message"]
    if record.status in ("done", "diverged"):
        return record
    elapsed = record.history[-1]["time"] if record.history else 0.0
    for epoch in range(len(record.history) + 1, config.epochs + 1):
        torch.manual_seed(seed * 100_003 + epoch)  # dropout masks: a function of (seed, epoch)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        model.train()
        progress.start_epoch(variant.name, seed, epoch, config.epochs, steps_per_epoch)
        start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        for index in _batches(n, config.batch_size, generator):
            xb, yb = data.x_train[index], data.y_train[index]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) + regularization_loss(model)
            if not torch.isfinite(loss):
                record.status = "diverged"
                record.message = f"loss became {loss.item()} in epoch {epoch}; variant stopped"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            apply_constraints(model)
            scheduler.step()
            total_loss += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            progress.step(total_loss / seen, correct / seen)
        train_time = time.perf_counter() - start
        if record.status == "diverged":
            progress.end_epoch(None)
            progress.message(f"{variant.name} seed {seed}: {record.message}")
        else:
            val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
            if not math.isfinite(val_loss):
                record.status = "diverged"
                record.message = f"validation loss became {val_loss} after epoch {epoch}; variant stopped"
                progress.message(f"{variant.name} seed {seed}: {record.message}")
            elapsed += train_time
            entry = {"variant": variant.name, "seed": seed, "epoch": epoch, "step": epoch * steps_per_epoch,
                     "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                     "val_loss": val_loss, "val_accuracy": val_acc, "epoch_time": train_time, "time": elapsed,
                     "lr": optimizer.param_groups[0]["lr"]}
            record.history.append(entry)
            if epoch == config.epochs and record.status != "diverged":
                record.status = "done"
            progress.end_epoch(entry)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "history": record.history, "status": record.status, "message": record.message}
        atomic_write(path, lambda p: torch.save(state, p))
        on_epoch(record)
        if record.status == "diverged":
            break
    return record


def write_metrics(run_dir: Path, records: list[RunRecord]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from every history (atomic, always consistent)."""
    rows = [entry for record in records for entry in record.history]
    columns = ["variant", "seed", "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
               "epoch_time", "time", "lr"]

    def jsonl(path: Path) -> None:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def csv(path: Path) -> None:
        lines = [",".join(columns)] + [",".join(_csv_cell(row[c]) for c in columns) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    atomic_write(run_dir / "metrics.jsonl", jsonl)
    atomic_write(run_dir / "metrics.csv", csv)


def _csv_cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
