"""Figures: log axes labelled in streams, and saving a figure into the run's folder."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter

from spotify_streams.config import Run
from spotify_streams.files import replacing


def _count_label(value: float) -> str:
    """1_000_000 -> '1 M', 30_000_000 -> '30 M', 2e9 -> '2 B'."""
    for size, unit in [(1e9, "B"), (1e6, "M"), (1e3, "k")]:
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def log_axis(axis, label="streams", max_ticks=4) -> None:
    """Label a matplotlib axis that holds log10 values: streams (10 M, 100 M, 1 B, with 3 × 10^k
    between them where that leaves at most max_ticks ticks), or with a label that starts with
    "actual ÷" a ratio (×0.3, ×1, ×3)."""
    lo, hi = axis.get_view_interval()
    ratio = label.startswith("actual ÷")
    for steps in [(1, 3), (1,)]:
        ticks = [t for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)
                 for t in np.log10(np.array(steps) * 10.0 ** e) if lo <= t <= hi]
        if len(ticks) <= max_ticks or ratio:
            break
    axis.set_major_locator(FixedLocator(ticks[::-(-len(ticks) // max_ticks) or 1]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"×{10 ** v:.2g}" if ratio
                                           else _count_label(10 ** v)))
    axis.set_label_text(f"{label} (log scale)")


def save_figure(fig, run: Run, name: str) -> None:
    """Save a figure as PNG in the run's figures folder (the README shows the committed ones)."""
    with replacing(run.figures_dir / f"{name}.png") as partial:  # no version stamp (the same
        fig.savefig(partial, metadata={"Software": None},  # bytes every run), nothing clipped
                    bbox_inches="tight")


def use_series_style() -> None:
    """The look of every figure of the series: seaborn's whitegrid theme, 9 × 4 in at 150 dpi
    (sharp at README width)."""
    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.figsize": (9, 4), "figure.dpi": 150, "savefig.dpi": 150})
