"""The figures: 150 dpi, stream counts in readable units, tick labels that never collide."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import PredictionErrorDisplay

import helpers
from spotify_streams.config import SAMPLE_DATA
from spotify_streams.plots import _count_label, log_axis


def test_series_figures_are_150_dpi_and_ratio_axes_read_as_factors():
    helpers.setup_notebook(DATA_PATH=str(SAMPLE_DATA))
    fig, ax = plt.subplots()
    assert fig.dpi >= 150 and matplotlib.rcParams["savefig.dpi"] >= 150
    ax.set_ylim(-0.7, 0.7)
    log_axis(ax.yaxis, "actual ÷ predicted")
    fig.canvas.draw()
    assert [t.get_text() for t in ax.yaxis.get_majorticklabels()] == ["×0.3", "×1", "×3"]
    plt.close(fig)


@pytest.mark.parametrize("value, text", [(1e6, "1 M"), (3e7, "30 M"), (1e9, "1 B"),
                                         (2.5e9, "2.5 B"), (5e3, "5 k")])
def test_counts_read_as_thousands_millions_billions(value, text):
    assert _count_label(value) == text


@pytest.mark.parametrize("lo, hi, ticks", [
    (6.0, 9.6, ["1 M", "10 M", "100 M", "1 B"]), (7.3, 9.5, ["100 M", "1 B"]),
    (8.0, 8.9, ["100 M", "300 M", "1 B"]), (5.0, 10.0, ["100 k", "10 M", "1 B"])])
def test_stream_axes_read_in_streams_with_2_to_4_labels_that_never_collide(lo, hi, ticks):
    """06's actual-versus-predicted panel (PredictionErrorDisplay) once read '100 M300 M'."""
    rng = np.random.default_rng(0)
    y = rng.uniform(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(4.0, 3.8), dpi=150)
    PredictionErrorDisplay.from_predictions(y, y + rng.normal(0, 0.1, 200), ax=ax,
                                            kind="actual_vs_predicted")
    log_axis(ax.xaxis, "predicted streams")
    log_axis(ax.yaxis, "actual streams")
    fig.tight_layout()
    fig.canvas.draw()
    for axis, name in [(ax.xaxis, "predicted"), (ax.yaxis, "actual")]:
        assert axis.get_label_text() == f"{name} streams (log scale)"
        shown = [t for t in axis.get_majorticklabels() if t.get_visible()]
        boxes = [t.get_window_extent() for t in shown]
        assert [t.get_text() for t in shown] == ticks
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), ticks
    plt.close(fig)
