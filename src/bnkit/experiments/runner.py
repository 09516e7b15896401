"""The training loop behind ``bnkit train`` and ``bnkit demo``.

One run = every variant x every seed of an :class:`ExperimentConfig`, trained one after
the other in a run folder.  After every epoch each (variant, seed) writes its checkpoint
atomically (model, optimizer, scheduler, history), and the metrics files are rewritten
from all histories, so a run killed at any moment can be resumed and ends with the same
metrics as an uninterrupted one: shuffling and dropout are seeded by (seed, epoch).
Under torchrun the same loop runs in every process on its share of each global batch
(:mod:`bnkit.experiments.parallel`), and rank 0 alone writes.
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
from torch.nn.parallel import DistributedDataParallel

from .. import apply_constraints, convert_sync_batchnorm, models, regularization_loss
from .._files import write_atomically
from ..data import Dataset
from . import parallel
from .config import ExperimentConfig, Variant
from .parallel import Processes
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
def _evaluation_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
                     device: torch.device | None = None) -> tuple[float, int]:
    """Summed cross-entropy and number of correct predictions of ``model`` (eval mode) on ``x``/``y``."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        inputs, target = x[start:start + batch_size], y[start:start + batch_size]
        if device is not None:
            inputs, target = inputs.to(device), target.to(device)
        logits = model(inputs)
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return loss, correct


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on ``x``/``y``."""
    param = next(model.parameters(), None)
    device = None if param is None or param.device.type == "cpu" else param.device
    loss, correct = _evaluation_sums(model, x, y, batch_size, device)
    return loss / len(x), correct / len(x)


def _validate(model: nn.Module, data: Dataset, processes: Processes, device: torch.device) -> tuple[float, float]:
    """Validation loss and accuracy over the whole validation set.

    On several processes each one evaluates its consecutive part of the validation set with
    rank 0's moving statistics (broadcast first: without synchronized BN, each process' own
    statistics would differ) and the summed losses and correct counts are added up exactly as
    one process would: the same numbers, up to the order of the float additions.
    """
    if not processes.distributed:
        return evaluate(model, data.x_val, data.y_val)
    parallel.broadcast_buffers(model, processes)
    low, high = parallel.val_range(len(data.x_val), processes)
    loss, correct = _evaluation_sums(model, data.x_val[low:high], data.y_val[low:high], device=device)
    loss, correct, count = parallel.sum_across([loss, correct, high - low], processes, device)
    return loss / count, correct / count


def train_variant(
    config: ExperimentConfig, variant: Variant, seed: int, data: Dataset, run_dir: Path,
    progress: Progress, record: RunRecord, on_epoch: Callable[[RunRecord], None],
    processes: Processes | None = None,
) -> RunRecord:
    """Train one (variant, seed), resuming from its checkpoint when there is one.

    With ``processes`` on several ranks (torchrun, an initialised process group), the model is
    wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, each rank trains on its
    :func:`~bnkit.experiments.parallel.shard` of every global batch, the metrics are summed over
    the ranks, and rank 0 alone writes the checkpoint (``run_dir`` must then be readable by every
    rank when resuming).
    """
    processes = processes or Processes()
    device = processes.device(config.device)
    torch.manual_seed(seed)
    net = build_model(config, variant, data.input_shape, data.num_classes)
    if config.sync_bn:
        net = convert_sync_batchnorm(net)
    net = net.to(device)
    optimizer = _optimizer(config, net)
    n = len(data.x_train)
    steps_per_epoch = max(1, n // config.batch_size) if n >= config.batch_size else 1
    scheduler = _schedule(config, optimizer, steps_per_epoch * config.epochs)
    path = checkpoint_path(run_dir, variant.name, seed)
    if parallel.broadcast_object(path.exists(), processes):  # rank 0 decides: every rank resumes, or none
        if not path.exists():
            raise FileNotFoundError(f"rank {processes.rank} cannot read {path}, which rank 0 resumes from: on "
                                    "several nodes the run folder must be on a file system every node reads")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            record.history, record.status, record.message = state["history"], state["status"], state["message"]
        except Exception as error:  # noqa: BLE001 - any damage is reported against the file
            text = " ".join(str(error).split())
            raise ValueError(f"{path}: expected the checkpoint of {variant.name} seed {seed} written by this run; "
                             f"found an unreadable or mismatched file ({type(error).__name__}: {text[:300]}); "
                             "delete it to train that variant again from the start") from None
    if record.status in ("done", "diverged"):
        return record
    # DDP averages the gradients over the ranks: each rank's loss is the mean over its equal
    # share of the global batch, so the average is the gradient of the global batch's mean loss.
    model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None) \
        if processes.distributed else net
    elapsed = record.history[-1]["time"] if record.history else 0.0
    for epoch in range(len(record.history) + 1, config.epochs + 1):
        # Dropout masks: a function of (seed, epoch), and of the rank (rank 0: as on one process).
        torch.manual_seed(seed * 100_003 + epoch + processes.rank * 2**40)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # the same global batches on every rank
        model.train()
        progress.start_epoch(variant.name, seed, epoch, config.epochs, steps_per_epoch)
        start, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        for index in _batches(n, config.batch_size, generator):
            index = parallel.shard(index, processes)
            xb, yb = data.x_train[index], data.y_train[index]
            if device.type != "cpu":
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) + regularization_loss(net)
            if processes.distributed:  # the global step's numbers, on every rank (one small all_reduce)
                step_loss, step_correct, step_seen = parallel.sum_across(
                    [loss.item() * len(yb), int((logits.argmax(1) == yb).sum()), len(yb)],
                    processes, device)
                finite = math.isfinite(step_loss)  # the same decision on every rank: no rank waits alone
                step_value = step_loss / step_seen
            else:
                finite = bool(torch.isfinite(loss))
                step_value = loss.item()
            if not finite:
                record.status = "diverged"
                record.message = f"loss became {step_value} in epoch {epoch}; variant stopped"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            apply_constraints(net)
            scheduler.step()
            if processes.distributed:
                total_loss += step_loss
                correct += int(step_correct)
                seen += int(step_seen)
            else:
                total_loss += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
            progress.step(total_loss / seen, correct / seen)
        train_time = time.perf_counter() - start
        if record.status == "diverged":
            progress.end_epoch(None)
            progress.message(f"{variant.name} seed {seed}: {record.message}")
        else:
            val_loss, val_acc = _validate(net, data, processes, device)
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
        if processes.is_main:
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "history": record.history, "status": record.status,
                     "message": record.message}
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
