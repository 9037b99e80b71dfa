"""The figures: 150 dpi, stream counts in readable units, tick labels that never collide."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.metrics import PredictionErrorDisplay  # noqa: E402

import helpers  # noqa: E402
from spotify_streams.config import SAMPLE_DATA  # noqa: E402
from spotify_streams.plots import _count_label, log_axis  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_majorticklabels() if t.get_visible()]


def test_setup_notebook_makes_figures_of_150_dpi(capsys):
    helpers.setup_notebook(DATA_PATH=str(SAMPLE_DATA))
    assert matplotlib.rcParams["figure.dpi"] >= 150 and matplotlib.rcParams["savefig.dpi"] >= 150


@pytest.mark.parametrize("value, text", [(1e6, "1 M"), (3e7, "30 M"), (1e9, "1 B"),
                                         (2.5e9, "2.5 B"), (5e3, "5 k")])
def test_counts_read_as_thousands_millions_billions(value, text):
    assert _count_label(value) == text


def panels(lo, hi):
    """06's actual-versus-predicted panel: PredictionErrorDisplay, both axes in streams."""
    rng = np.random.default_rng(0)
    y = rng.uniform(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(4.0, 3.8), dpi=150)
    PredictionErrorDisplay.from_predictions(y, y + rng.normal(0, 0.1, 200), ax=ax,
                                            kind="actual_vs_predicted")
    log_axis(ax.xaxis, "predicted streams")
    log_axis(ax.yaxis, "actual streams")
    fig.tight_layout()
    fig.canvas.draw()
    return fig, ax


@pytest.mark.parametrize("lo, hi", [(6.0, 9.6), (7.3, 9.5), (8.0, 8.9), (5.0, 10.0)])
def test_stream_tick_labels_never_collide(lo, hi):
    """The panels once read '100 M300 M': 2 to 4 ticks, no two labels' boxes overlap."""
    fig, ax = panels(lo, hi)
    for axis in (ax.xaxis, ax.yaxis):
        boxes = [t.get_window_extent(fig.canvas.get_renderer())
                 for t in axis.get_majorticklabels() if t.get_visible() and t.get_text()]
        assert 2 <= len(boxes) <= 4, labels(axis)
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), \
            labels(axis)


def test_stream_axes_are_labelled_in_streams_or_ratios_not_log10():
    fig, ax = panels(7.3, 9.5)
    assert {"100 M", "1 B"} <= set(labels(ax.xaxis)) and "100 M" in labels(ax.yaxis)
    assert ax.get_xlabel() == "predicted streams (log scale)" and "log10" not in ax.get_ylabel()
    fig, ax = plt.subplots()
    ax.set_ylim(-0.7, 0.7)
    log_axis(ax.yaxis, "actual ÷ predicted")
    fig.canvas.draw()
    assert labels(ax.yaxis) == ["×0.3", "×1", "×3"]
