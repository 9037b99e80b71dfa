"""spotify-bench: report and table from stubbed measurements; the measurements on the API."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from spotify_streams.commands import benchmark as bench
from spotify_streams.commands import update_readme
from spotify_streams.evaluation import split_train_test
from spotify_streams.features import feature_columns, make_preprocessor

FIGURES = {"naive_fit_s": 12.0, "fast_fit_s": 3.0, "fast_fit_cold_s": 5.12345,
           "naive_grid_s": 1920.0, "grid_s": 48.0, "grid_cold_s": 60.0, "grid_per_fit_s": 0.3,
           "series_s": 300.0, "peak_memory_mb": 1000.0, "quick_solo_s": 100.0,
           "contention_two_runs": 1.9, "contention_busy_loop": 2.6}
MEASUREMENTS = {"measure_fits": ["naive_fit_s", "fast_fit_s", "fast_fit_cold_s", "naive_grid_s"],
                "measure_grid": ["grid_s", "grid_cold_s", "grid_per_fit_s"],
                "measure_series": ["series_s", "peak_memory_mb"],
                "measure_contention": ["quick_solo_s", "contention_two_runs",
                                       "contention_busy_loop"]}


@pytest.fixture
def ran(monkeypatch):
    """Every measurement replaced by the fixed FIGURES; the names of those that ran."""
    ran = []
    for name, keys in MEASUREMENTS.items():
        monkeypatch.setattr(bench, name, lambda *_, n=name, k=keys: ran.append(n) or {
            key: FIGURES[key] for key in k})
    monkeypatch.setattr(bench, "measure_scaling", lambda sizes: ran.append(
        "measure_scaling") or {str(n): n / 100 for n in sizes})
    monkeypatch.setattr(bench, "load_train", lambda: (None, "stub.csv (10 cleaned rows)"))
    return ran


def test_the_report_its_goals_and_the_table(ran, tmp_path, capsys):
    """Speed-ups 12/3 = 4 and 1920/48 = 40; each figure against its goal."""
    assert bench.main(["--output", str(out := tmp_path / "sub" / "bench.json")]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "date", "data", "load_average", "figures", "goals",
                           "scaling_quick_series_s"}
    assert list(report["figures"]) == bench.FIGURES and report["data"].startswith("stub.csv")
    assert report["goals"] == {"grid_s": 60, "series_s": 240, "peak_memory_mb": 2048,
                               "speedup_single": 10, "speedup_grid": 25,
                               "contention_two_runs": 2.5, "contention_busy_loop": 2.5}
    assert report["scaling_quick_series_s"] == {"1000": 10.0, "5000": 50.0, "20000": 200.0}
    assert (report["figures"]["speedup_single"], report["figures"]["speedup_grid"]) == (4.0, 40.0)
    assert report["figures"]["fast_fit_cold_s"] == 5.123  # rounded to 3 decimals
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"]) and len(report["load_average"]) == 2
    assert ran == ["measure_fits", "measure_grid", "measure_series", "measure_scaling",
                   "measure_contention"]
    table = capsys.readouterr().out
    for line in [r"series_s\s+300.0\s+<= 240\s+goal missed", r"grid_s\s+48.0\s+<= 60\s+ok",
                 r"speedup_single\s+4.0\s+>= 10\s+goal missed", r"speedup_grid\s+40.0\s+>= 25\s+ok",
                 r"contention_two_runs\s+1.9\s+<= 2.5\s+ok",
                 r"contention_busy_loop\s+2.6\s+<= 2.5\s+goal missed"]:
        assert re.search(line, table), line
    assert re.match(r"\d+-core .+, \d+ GiB RAM, Python 3\.\d+, TensorFlow \d+\.\d+$",
                    bench.machine())
    ran.clear()
    bench.main(["--output", str(out), "--skip-series"])
    figures = json.loads(out.read_text())["figures"]
    assert not {"measure_series", "measure_scaling", "measure_contention"} & set(ran)
    assert (figures["series_s"], figures["peak_memory_mb"], figures["grid_s"]) == (None, None, 48)


def test_the_report_feeds_the_readme_generator():
    report = bench.build_report(FIGURES, "stub.csv", [0.5, 0.7], "2-core X", "2024-01-01")
    block = update_readme.performance_block(report)
    assert "2-core X (2024-01-01)" in block and "| 300 s | ≤ 240 s |" in block
    assert "| × 1.90 | ≤ × 2.5 |" in block and "| × 2.60 | ≤ × 2.5 |" in block
    old = update_readme.performance_block({**report, "figures": {"grid_s": 20}})
    assert "| 20 s | ≤ 60 s |" in old and "| not measured | ≤ 240 s |" in old


def test_the_measurements_run_on_the_project_api(songs, monkeypatch):
    """measure_fits and measure_step on the package, 1-epoch fits (once broke `make bench`)."""
    train, _ = split_train_test(songs)
    seen, make_mlp = [], bench.make_mlp

    def naive_fit(X, y, epochs=100, batch_size=32):
        assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.shape[0] == len(train)
        seen.append(epochs)

    monkeypatch.setattr(bench, "naive_fit", naive_fit)
    monkeypatch.setattr(bench, "make_mlp", lambda fs: make_mlp(fs, epochs=1))
    monkeypatch.setattr(bench, "measure_step", lambda *_: {"step_ms": 0.5})
    figures = bench.measure_fits(train)
    assert seen == [100] * (bench.REPEATS + 1) + [20, 20]
    assert figures["fast_fit_s"] > 0 and figures["naive_grid_s"] > 0 and figures["step_ms"] == 0.5
    monkeypatch.undo()
    X = make_preprocessor("full").fit_transform(train[feature_columns("full")])
    step = bench.measure_step(X.astype(np.float32), np.zeros(len(X), np.float32), train)
    assert step["step_ms"] > 0 and step["grid_steps"] > 10_000
