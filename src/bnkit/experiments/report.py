"""Results of a run: the comparison table and the learning-curve plots."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from .runner import RunRecord

__all__ = ["LAG_HINT", "VariantResult", "summarize", "format_table", "plot_curves"]


#: A BN variant whose validation accuracy trails its training accuracy by this much (mean over
#: seeds, at some epoch) gets the table's footnote on lagging moving statistics.
LAG_HINT = 0.3


@dataclass(frozen=True)
class VariantResult:
    variant: str
    seeds: int
    finished: int
    final_accuracy: tuple[float, float]  # mean, std over seeds
    best_accuracy: tuple[float, float]
    reached: int  # seeds that reached the target
    epochs_to_target: float | None  # mean over the seeds that reached it
    steps_to_target: float | None
    time_to_target: float | None
    speedup: float | None  # epochs to target of the baseline / this variant's
    diverged: int
    lag: float = 0.0  # largest (mean train accuracy - mean val accuracy) over the epochs
    lag_epoch: int = 0  # the epoch of that largest lag
    momentum: float | None = None  # the variant's BN momentum; None without BN


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def _lag(runs: list[RunRecord]) -> tuple[float, int]:
    """Largest gap between mean training and mean validation accuracy over the epochs, and its epoch."""
    best, at = 0.0, 0
    length = max((len(r.history) for r in runs), default=0)
    for i in range(length):
        entries = [r.history[i] for r in runs if len(r.history) > i]
        gap = statistics.fmean(e["train_accuracy"] - e["val_accuracy"] for e in entries)
        if gap > best:
            best, at = gap, entries[0]["epoch"]
    return best, at


def summarize(records: list[RunRecord], target: float, baseline: str = "none",
              momenta: Mapping[str, float | None] | None = None) -> list[VariantResult]:
    """Per variant: accuracies (mean +- std over seeds) and how fast the target was reached.

    ``momenta`` maps variant names to their BN momentum (``None``: no BN); it lets
    :func:`format_table` explain validation accuracy that trails training accuracy.
    """
    order: list[str] = []
    for record in records:
        if record.variant not in order:
            order.append(record.variant)
    results = []
    for variant in order:
        runs = [r for r in records if r.variant == variant]
        finals = [r.history[-1]["val_accuracy"] for r in runs if r.history]
        bests = [max(e["val_accuracy"] for e in r.history) for r in runs if r.history]
        hits = [next((e for e in r.history if e["val_accuracy"] >= target), None) for r in runs]
        hit = [h for h in hits if h is not None]
        lag, lag_epoch = _lag(runs)
        results.append(VariantResult(
            variant=variant, seeds=len(runs), finished=sum(r.status == "done" for r in runs),
            final_accuracy=_mean_std(finals), best_accuracy=_mean_std(bests), reached=len(hit),
            epochs_to_target=statistics.fmean(h["epoch"] for h in hit) if hit else None,
            steps_to_target=statistics.fmean(h["step"] for h in hit) if hit else None,
            time_to_target=statistics.fmean(h["time"] for h in hit) if hit else None,
            speedup=None, diverged=sum(r.status == "diverged" for r in runs), lag=lag, lag_epoch=lag_epoch,
            momentum=(momenta or {}).get(variant),
        ))
    base = next((r for r in results if r.variant == baseline), None)
    if base is not None and base.epochs_to_target and base.reached == base.seeds:
        results = [_with_speedup(r, base.epochs_to_target) for r in results]
    return results


def _with_speedup(result: VariantResult, base_epochs: float) -> VariantResult:
    if result.epochs_to_target is None or result.reached < result.seeds:
        return result
    return replace(result, speedup=base_epochs / result.epochs_to_target)


def format_table(results: list[VariantResult], target: float, baseline: str = "none") -> str:
    """A plain-text table and its footnotes; speed-ups are in epochs to the target, relative to ``baseline``.

    The speed-up column is left out when no variant is ``baseline``; when the baseline did not
    reach the target in every seed, the cells of the variants that did say so.  BN variants
    whose validation accuracy trailed their training accuracy by :data:`LAG_HINT` or more are
    starred, and one footnote explains the moving statistics' lag.
    """
    base = next((r for r in results if r.variant == baseline), None)
    lagging = [r for r in results if r.momentum is not None and r.lag >= LAG_HINT]
    headers = ["variant", "final val acc", "best val acc", f"epochs to {target:.0%}", "steps", "time (s)"]
    if base is not None:
        headers.append(f"speed-up vs {baseline}")
    rows = []
    for r in results:
        reach = "never" if r.epochs_to_target is None else f"{r.epochs_to_target:.1f}"
        if r.epochs_to_target is not None and r.reached < r.seeds:
            reach += f" ({r.reached}/{r.seeds} seeds)"
        row = [
            r.variant + (f" [{r.diverged} diverged]" if r.diverged else "") + (" *" if r in lagging else ""),
            f"{r.final_accuracy[0]:.3f} ± {r.final_accuracy[1]:.3f}",
            f"{r.best_accuracy[0]:.3f} ± {r.best_accuracy[1]:.3f}",
            reach,
            "-" if r.steps_to_target is None else f"{r.steps_to_target:.0f}",
            "-" if r.time_to_target is None else f"{r.time_to_target:.1f}",
        ]
        if base is not None:
            row.append(_speedup_cell(r, base, target))
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    note = (f"mean ± std over seeds; epochs/steps/time to {target:.0%} validation accuracy are means over the seeds "
            "that reached it; time is training wall time without evaluation (noisy on a busy machine)")
    if base is not None:
        note += (f"; speed-up = epochs of '{baseline}' / epochs of the variant (only when every seed of both "
                 "reached the target)")
    notes = [note + "."]
    if lagging:
        notes.append(_lag_note(lagging))
    return "\n".join([line.rstrip(), "-" * len(line.rstrip()), *body, "", *notes])


def _speedup_cell(result: VariantResult, base: VariantResult, target: float) -> str:
    if result.speedup is not None:
        return f"{result.speedup:.2f}x"
    if result is base or result.epochs_to_target is None or result.reached < result.seeds:
        return "-"
    if base.reached == 0:
        return f"{base.variant} never reached {target:.0%}"
    return f"{base.variant} reached {target:.0%} in {base.reached}/{base.seeds} seeds"


def _lag_note(lagging: list[VariantResult]) -> str:
    worst = max(lagging, key=lambda r: r.lag)
    momentum = worst.momentum if worst.momentum is not None else 0.99
    horizon = f"the last ~{1 / (1 - momentum):.0f} steps" if momentum < 1 else "nothing new"
    text = (f"* validation accuracy trailed training accuracy (by {worst.lag:.2f} in epoch {worst.lag_epoch} for "
            f"{worst.variant}): evaluation normalises with BN's moving mean/variance, which with momentum "
            f"{momentum:g} average {horizon} and lag behind weights that change fast early in training.")
    if momentum > 0.9:
        text += (" For short runs use momentum 0.9 (momentum = 0.9 in a [[variants]] table of --config, "
                 "or Variant(..., momentum=0.9)).")
    return text


def plot_curves(records: list[RunRecord], path: Path, title: str = "") -> Path:
    """Loss and validation accuracy vs epoch and vs training time (see :mod:`.plots`)."""
    from .plots import plot_curves as plot

    return plot(records, path, title)
