"""Results of a run: the comparison table and the learning-curve plots."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .._optional import optional_import
from .runner import RunRecord

__all__ = ["VariantResult", "summarize", "format_table", "plot_curves"]


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[RunRecord], target: float, baseline: str = "none") -> list[VariantResult]:
    """Per variant: accuracies (mean +- std over seeds) and how fast the target was reached."""
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
        results.append(VariantResult(
            variant=variant, seeds=len(runs), finished=sum(r.status == "done" for r in runs),
            final_accuracy=_mean_std(finals), best_accuracy=_mean_std(bests), reached=len(hit),
            epochs_to_target=statistics.fmean(h["epoch"] for h in hit) if hit else None,
            steps_to_target=statistics.fmean(h["step"] for h in hit) if hit else None,
            time_to_target=statistics.fmean(h["time"] for h in hit) if hit else None,
            speedup=None, diverged=sum(r.status == "diverged" for r in runs),
        ))
    base = next((r for r in results if r.variant == baseline), None)
    if base is not None and base.epochs_to_target and base.reached == base.seeds:
        results = [_with_speedup(r, base.epochs_to_target) for r in results]
    return results


def _with_speedup(result: VariantResult, base_epochs: float) -> VariantResult:
    if result.epochs_to_target is None or result.reached < result.seeds:
        return result
    from dataclasses import replace

    return replace(result, speedup=base_epochs / result.epochs_to_target)


def format_table(results: list[VariantResult], target: float, baseline: str = "none") -> str:
    """A plain-text table; speed-ups are in epochs to the target, relative to ``baseline``."""
    headers = ["variant", "final val acc", "best val acc", f"epochs to {target:.0%}", "steps", "time (s)",
               f"speed-up vs {baseline}"]
    rows = []
    for r in results:
        reach = "never" if r.epochs_to_target is None else f"{r.epochs_to_target:.1f}"
        if r.epochs_to_target is not None and r.reached < r.seeds:
            reach += f" ({r.reached}/{r.seeds} seeds)"
        rows.append([
            r.variant + (f" [{r.diverged} diverged]" if r.diverged else ""),
            f"{r.final_accuracy[0]:.3f} ± {r.final_accuracy[1]:.3f}",
            f"{r.best_accuracy[0]:.3f} ± {r.best_accuracy[1]:.3f}",
            reach,
            "-" if r.steps_to_target is None else f"{r.steps_to_target:.0f}",
            "-" if r.time_to_target is None else f"{r.time_to_target:.1f}",
            "-" if r.speedup is None else f"{r.speedup:.2f}x",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    note = (f"mean ± std over seeds; epochs/steps/time to {target:.0%} validation accuracy are means over the seeds "
            f"that reached it; speed-up = epochs of '{baseline}' / epochs of the variant (only when every seed of "
            "both reached the target).")
    return "\n".join([line, "-" * len(line), *body, "", note])


def plot_curves(records: list[RunRecord], path: Path, title: str = "") -> Path:
    """Loss and validation accuracy vs epoch and vs wall time; mean line and min-max band over seeds."""
    matplotlib = optional_import("matplotlib", "for the plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    variants = list(dict.fromkeys(r.variant for r in records))
    for variant, color in zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        runs = [r.history for r in records if r.variant == variant and r.history]
        if not runs:
            continue
        length = min(len(h) for h in runs)
        for row, key in enumerate(("train_loss", "val_accuracy")):
            values = [[h[i][key] for h in runs] for i in range(length)]
            mean = [statistics.fmean(v) for v in values]
            low, high = [min(v) for v in values], [max(v) for v in values]
            for col, xs in enumerate(([h["epoch"] for h in runs[0][:length]],
                                      [statistics.fmean(h[i]["time"] for h in runs) for i in range(length)])):
                ax = axes[row][col]
                ax.plot(xs, mean, color=color, label=variant, marker="o", markersize=3)
                ax.fill_between(xs, low, high, color=color, alpha=0.2)
    for row, label in enumerate(("training loss", "validation accuracy")):
        for col, xlabel in enumerate(("epoch", "training time (s)")):
            axes[row][col].set(xlabel=xlabel, ylabel=label)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
