"""The learning-curve figure, checked on its data (ticks, limits, labels, styles), not by eye."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt  # noqa: E402

from bnkit.experiments.plots import MIN_ACCURACY_SPAN, curves_figure, plot_curves  # noqa: E402
from bnkit.experiments.runner import RunRecord  # noqa: E402


def _record(variant: str, seed: int, val: list[float], loss: list[float] | None = None,
            seconds: float = 1.3) -> RunRecord:
    loss = loss if loss is not None else [2.3 - 0.1 * i for i in range(len(val))]
    history = [{"variant": variant, "seed": seed, "epoch": i + 1, "step": 40 * (i + 1), "train_loss": loss[i],
                "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": v, "epoch_time": seconds,
                "time": seconds * (i + 1)} for i, v in enumerate(val)]
    return RunRecord(variant, seed, history, "done")


@pytest.fixture
def figure():
    made = []

    def make(records: list[RunRecord], title: str = ""):
        fig = curves_figure(records, title)
        made.append(fig)
        return fig

    yield make
    for fig in made:
        plt.close(fig)


@pytest.mark.parametrize("epochs", [1, 3, 5, 8, 30])
def test_epoch_ticks_are_whole_numbers(figure, epochs: int) -> None:
    fig = figure([_record("none", 0, [0.1 + 0.02 * i for i in range(epochs)])])
    for ax in fig.axes[0::2]:  # the epoch column
        assert ax.get_xlabel() == "epoch"
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks, ax.get_xlim()
        assert all(float(t).is_integer() for t in ticks), ticks


def test_a_flat_accuracy_curve_is_not_zoomed_into_noise(figure) -> None:
    # the no-BN demo curves: chance level with +-0.003 of noise (0.096-0.104 was the old view)
    records = [_record("none", s, [0.100, 0.097, 0.103, 0.100]) for s in range(3)]
    fig = figure(records)
    for ax in fig.axes[2:]:  # validation accuracy row
        assert ax.get_ylabel() == "validation accuracy"
        low, high = ax.get_ylim()
        assert high - low >= MIN_ACCURACY_SPAN - 1e-12 >= 0.1
        assert 0.0 <= low <= 0.097 and 0.103 <= high <= 1.0


@pytest.mark.parametrize("values", [[0.99, 1.0, 1.0], [0.0, 0.01, 0.0], [0.1, 0.5, 0.95]])
def test_accuracy_limits_stay_inside_zero_one_and_show_the_data(figure, values: list[float]) -> None:
    fig = figure([_record("before_activation", 0, values)])
    low, high = fig.axes[2].get_ylim()
    assert 0.0 <= low <= min(values) and max(values) <= high <= 1.0
    assert high - low >= MIN_ACCURACY_SPAN - 1e-12


def test_loss_axis_has_a_minimum_span_above_zero(figure) -> None:
    fig = figure([_record("none", 0, [0.1, 0.1, 0.1], loss=[2.3059, 2.3044, 2.3052])])
    low, high = fig.axes[0].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN - 1e-12 and low <= 2.3044 and high >= 2.3059 and low >= 0.0


def test_time_axis_says_it_is_noisy_training_wall_time(figure) -> None:
    fig = figure([_record("none", 0, [0.1, 0.2])])
    for ax in fig.axes[1::2]:
        label = ax.get_xlabel()
        assert "wall clock" in label and "without evaluation" in label and "noisy" in label


def test_identical_curves_stay_distinguishable(figure) -> None:
    same = [0.1, 0.1, 0.1, 0.1]
    records = [_record("none", 0, same), _record("copy", 0, same), _record("bn", 0, [0.2, 0.5, 0.8, 0.9])]
    fig = figure(records)
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == 3
        assert len({line.get_linestyle() for line in lines}) == 3
        assert len({line.get_marker() for line in lines}) == 3
        assert all(line.get_alpha() is not None and line.get_alpha() < 1 for line in lines)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["none", "copy (identical to none)", "bn"]
    notes = [t.get_text() for t in fig.axes[2].texts]  # accuracy vs epoch: none and copy coincide
    assert notes == ["same curve: none = copy"]


def test_curves_that_coincide_in_one_panel_only_are_named_there(figure) -> None:
    records = [_record("none", 0, [0.1, 0.1], loss=[2.30, 2.30]),
               _record("bn", 0, [0.1, 0.1], loss=[2.0, 1.0])]
    fig = figure(records)
    assert [t.get_text() for t in fig.axes[2].texts] == ["same curve: none = bn"]
    assert fig.axes[0].texts == [] or [t.get_text() for t in fig.axes[0].texts] == []
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["none", "bn"]


def test_plot_curves_writes_a_png_with_the_title(tmp_path: Path) -> None:
    path = plot_curves([_record("none", 0, [0.1, 0.2])], tmp_path / "curves.png", title="t, 1 seed")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # closed
