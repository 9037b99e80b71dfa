"""The figures: sharp enough for the README, stream counts in readable units."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402


@pytest.fixture(autouse=True)
def style():
    helpers.use_plot_style()
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_majorticklabels()]


def test_figures_are_at_least_150_dpi():
    assert matplotlib.rcParams["figure.dpi"] >= 150 and matplotlib.rcParams["savefig.dpi"] >= 150


@pytest.mark.parametrize("value, text", [(1e6, "1 M"), (3e7, "30 M"), (1e9, "1 B"),
                                         (2.5e9, "2.5 B"), (5e3, "5 k")])
def test_counts_read_as_thousands_millions_billions(value, text):
    assert helpers._count_label(value) == text


def test_stream_axes_are_labelled_in_streams_not_log10():
    rng = np.random.default_rng(0)
    y = rng.normal(8.3, 0.5, 100)
    pred = 0.7 * y + 2.5
    fig = helpers.plot_prediction_errors(y, {"a": pred})
    ax = fig.axes[0]
    fig.canvas.draw()
    assert {"100 M", "1 B"} <= set(labels(ax.xaxis)) and "100 M" in labels(ax.yaxis)
    assert "log10" not in ax.get_xlabel() + ax.get_ylabel()
    fig = helpers.plot_prediction_errors(y, {"a": pred}, kind="residual_vs_predicted")
    fig.canvas.draw()
    assert "×1" in labels(fig.axes[0].yaxis) and "predicted" in fig.axes[0].get_xlabel()
    assert "actual ÷ predicted" in fig.axes[0].get_ylabel()
    fig = helpers.plot_target_distribution(pd.Series(10 ** y))
    fig.canvas.draw()
    assert "100 M" in labels(fig.axes[1].xaxis)


def test_importance_panels_share_rows_and_label_each_column():
    """06 draws the seed MLP (audio, pre-release) and the tuned MLP (full) in one row: no
    empty panel is shown, and each column's lowest drawn panel carries the x-axis label."""
    imp = pd.DataFrame({"feature": ["a", "b"], "r2_drop": [0.2, 0.1], "r2_drop_std": [0, 0]})
    keys = [("hgb tuned", "audio"), ("hgb tuned", "full"), ("seed MLP", "audio"),
            ("tuned MLP", "full")]
    fig = helpers.plot_importance({k: imp for k in keys}, {k: 0.5 for k in keys},
                                  rows={"seed MLP": "MLP", "tuned MLP": "MLP"})
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(fig.axes) == 4 and len(shown) == 4
    assert [ax.get_title() for ax in shown[2:]] == ["seed MLP, audio: test R² 0.50",
                                                    "tuned MLP, full: test R² 0.50"]
    assert [bool(ax.get_xlabel()) for ax in shown] == [False, False, True, True]
    fig = helpers.plot_importance({k: imp for k in keys[:3]}, {k: 0.5 for k in keys})
    assert [ax.get_visible() for ax in fig.axes] == [True, True, True, False]
    assert fig.axes[1].get_xlabel() and fig.axes[2].get_xlabel()  # the full column: row 1
