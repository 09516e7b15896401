"""The learning-curve figure of a run: loss and validation accuracy, by epoch and by training time.

Choices that keep the figure honest for a first reader:

* epoch axes have integer ticks (an epoch is a whole number);
* accuracy axes span at least :data:`MIN_ACCURACY_SPAN` inside [0, 1], so a flat curve at
  chance level is drawn flat instead of being zoomed into its rounding noise (losses get the
  same minimum span above 0);
* each variant has its own line style and marker, lines are slightly transparent, a variant
  whose curves all equal an earlier one's says so in the legend ("identical to ..."), and an
  epoch panel where curves coincide names them ("same curve: a = b");
* the time axis says what it measures: training wall time without evaluation, which
  depends on what else the machine is doing.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import optional_import
from .runner import RunRecord

__all__ = ["MIN_ACCURACY_SPAN", "TIME_LABEL", "curves_figure", "plot_curves"]

#: Smallest y-range of an accuracy (or loss) axis.
MIN_ACCURACY_SPAN = 0.2
TIME_LABEL = "training time, s (wall clock, without evaluation; noisy)"
_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_KEYS = (("train_loss", "training loss"), ("val_accuracy", "validation accuracy"))


@dataclass(frozen=True)
class _Curves:
    """One variant's mean and min-max band over seeds, per epoch."""

    variant: str
    epochs: list[int]
    times: list[float]
    mean: dict[str, list[float]]
    low: dict[str, list[float]]
    high: dict[str, list[float]]


def _curves(records: list[RunRecord]) -> list[_Curves]:
    result = []
    for variant in dict.fromkeys(r.variant for r in records):
        runs = [r.history for r in records if r.variant == variant and r.history]
        if not runs:
            continue
        length = min(len(h) for h in runs)
        mean, low, high = {}, {}, {}
        for key, _ in _KEYS:
            values = [[h[i][key] for h in runs] for i in range(length)]
            mean[key] = [statistics.fmean(v) for v in values]
            low[key], high[key] = [min(v) for v in values], [max(v) for v in values]
        result.append(_Curves(variant, [int(e["epoch"]) for e in runs[0][:length]],
                              [statistics.fmean(h[i]["time"] for h in runs) for i in range(length)],
                              mean, low, high))
    return result


def _same(a: _Curves, b: _Curves, keys: tuple[str, ...] = tuple(k for k, _ in _KEYS)) -> bool:
    """Whether ``a`` and ``b`` have the same epochs and mean curves of ``keys``."""
    return a.epochs == b.epochs and all(
        len(a.mean[k]) == len(b.mean[k]) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
                                                 for x, y in zip(a.mean[k], b.mean[k]))
        for k in keys)


def _overlaps(curves: list[_Curves], key: str) -> list[list[str]]:
    """Groups of variants (two or more) whose mean ``key`` curves by epoch coincide."""
    groups: list[list[_Curves]] = []
    for curve in curves:
        group = next((g for g in groups if _same(g[0], curve, (key,))), None)
        if group is None:
            groups.append([curve])
        else:
            group.append(curve)
    return [[c.variant for c in g] for g in groups if len(g) > 1]


def _limits(values: list[float], low_bound: float, high_bound: float) -> tuple[float, float]:
    """Data range plus 5% margins, at least MIN_ACCURACY_SPAN wide, inside [low_bound, high_bound]."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (low_bound, min(high_bound, low_bound + 1.0))
    lo, hi = min(finite), max(finite)
    margin = 0.05 * (hi - lo)
    lo, hi = lo - margin, hi + margin
    if hi - lo < MIN_ACCURACY_SPAN:
        middle = (lo + hi) / 2
        lo, hi = middle - MIN_ACCURACY_SPAN / 2, middle + MIN_ACCURACY_SPAN / 2
    if lo < low_bound:
        lo, hi = low_bound, hi + (low_bound - lo)
    if hi > high_bound:
        lo, hi = max(low_bound, lo - (hi - high_bound)), high_bound
    return lo, hi


def curves_figure(records: list[RunRecord], title: str = "") -> Any:
    """A 2x2 matplotlib figure (Agg): loss and validation accuracy vs epoch and vs training time.

    Mean line and min-max band over seeds per variant. The caller closes the figure.
    """
    matplotlib = optional_import("matplotlib", "for the plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    curves = _curves(records)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spans: dict[str, list[float]] = {key: [] for key, _ in _KEYS}
    for k, curve in enumerate(curves):
        twin = next((c.variant for c in curves[:k] if _same(c, curve)), None)
        label = curve.variant + (f" (identical to {twin})" if twin else "")
        style = dict(color=colors[k % len(colors)], linestyle=_LINE_STYLES[k % len(_LINE_STYLES)],
                     marker=_MARKERS[k % len(_MARKERS)], markersize=4, alpha=0.85, label=label)
        for row, (key, _) in enumerate(_KEYS):
            spans[key] += curve.low[key] + curve.high[key]
            for col, xs in enumerate((curve.epochs, curve.times)):
                ax = axes[row][col]
                ax.plot(xs, curve.mean[key], **style)
                ax.fill_between(xs, curve.low[key], curve.high[key], color=style["color"], alpha=0.15)
    for row, (key, name) in enumerate(_KEYS):
        limits = _limits(spans[key], 0.0, 1.0) if key == "val_accuracy" else _limits(spans[key], 0.0, math.inf)
        for col, xlabel in enumerate(("epoch", TIME_LABEL)):
            ax = axes[row][col]
            ax.set(xlabel=xlabel, ylabel=name, ylim=limits)
            ax.grid(alpha=0.3)
        axes[row][0].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        epochs = [e for c in curves for e in c.epochs]
        if epochs and max(epochs) - min(epochs) < 2:  # one or two epochs: room around whole numbers
            axes[row][0].set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        overlaps = _overlaps(curves, key)
        if overlaps:  # drawn on top of each other: say which lines hide which
            axes[row][0].text(0.02, 0.02, "; ".join("same curve: " + " = ".join(g) for g in overlaps),
                              transform=axes[row][0].transAxes, fontsize=8, va="bottom")
    if curves:
        axes[0][0].legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(records: list[RunRecord], path: Path, title: str = "") -> Path:
    """Write :func:`curves_figure` to ``path`` (PNG) and return ``path``."""
    fig = curves_figure(records, title)  # checks that matplotlib is installed
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
