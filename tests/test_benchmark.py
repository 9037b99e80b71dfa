"""Tests of the pure parts of scripts/benchmark.py (no timing: the measurements are stubbed)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"naive_fit_s": 12.0, "fast_fit_s": 3.0, "fast_fit_cold_s": 5.12345,
           "naive_grid_s": 1920.0, "grid_s": 48.0, "grid_cold_s": 60.0, "grid_per_fit_s": 0.3,
           "series_s": 300.0, "peak_memory_mb": 1000.0, "quick_solo_s": 100.0,
           "contention_two_runs": 1.9, "contention_busy_loop": 2.6}


def load_script(name: str):
    """A script in scripts/ imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark")


@pytest.fixture
def stubbed(bench, monkeypatch):
    """The benchmark with every measurement replaced by fixed figures; records what ran."""
    ran = []

    def stub(name, keys):
        def measure(*_):
            ran.append(name)
            return {k: FIGURES[k] for k in keys}
        monkeypatch.setattr(bench, name, measure)

    monkeypatch.setattr(bench, "load_train", lambda: (None, "stub.csv (10 cleaned rows)"))
    stub("measure_fits", ["naive_fit_s", "fast_fit_s", "fast_fit_cold_s", "naive_grid_s"])
    stub("measure_grid", ["grid_s", "grid_cold_s", "grid_per_fit_s"])
    stub("measure_series", ["series_s", "peak_memory_mb"])
    stub("measure_contention", ["quick_solo_s", "contention_two_runs", "contention_busy_loop"])

    def scaling(sizes):
        ran.append("measure_scaling")
        return {str(n): n / 100 for n in sizes}
    monkeypatch.setattr(bench, "measure_scaling", scaling)
    return bench, ran


def test_output_option_writes_documented_layout(stubbed, tmp_path, capsys):
    bench, ran = stubbed
    out = tmp_path / "sub" / "bench.json"
    assert bench.main(["--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "date", "data", "load_average", "figures", "goals",
                           "scaling_quick_series_s"}
    assert list(report["figures"]) == bench.FIGURES
    assert report["goals"] == {"grid_s": 60, "series_s": 240, "peak_memory_mb": 2048,
                               "speedup_single": 10, "speedup_grid": 25,
                               "contention_two_runs": 2.5, "contention_busy_loop": 2.5}
    assert report["scaling_quick_series_s"] == {"1000": 10.0, "5000": 50.0, "20000": 200.0}
    assert report["figures"]["speedup_single"] == 4.0
    assert report["figures"]["speedup_grid"] == 40.0
    assert report["figures"]["fast_fit_cold_s"] == 5.123  # rounded to 3 decimals
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"])
    assert len(report["load_average"]) == 2
    assert report["data"].startswith("stub.csv")
    assert ran == ["measure_fits", "measure_grid", "measure_series", "measure_scaling",
                   "measure_contention"]
    table = capsys.readouterr().out
    assert re.search(r"series_s\s+300.0\s+<= 240\s+goal missed", table)
    assert re.search(r"grid_s\s+48.0\s+<= 60\s+ok", table)
    assert re.search(r"speedup_single\s+4.0\s+>= 10\s+goal missed", table)
    assert re.search(r"speedup_grid\s+40.0\s+>= 25\s+ok", table)
    assert re.search(r"contention_two_runs\s+1.9\s+<= 2.5\s+ok", table)
    assert re.search(r"contention_busy_loop\s+2.6\s+<= 2.5\s+goal missed", table)


def test_skip_series(stubbed, tmp_path):
    bench, ran = stubbed
    out = tmp_path / "bench.json"
    bench.main(["--output", str(out), "--skip-series"])
    figures = json.loads(out.read_text())["figures"]
    assert not {"measure_series", "measure_scaling", "measure_contention"} & set(ran)
    assert figures["series_s"] is None and figures["peak_memory_mb"] is None
    assert figures["grid_s"] == 48.0


def test_report_feeds_the_readme_generator(bench):
    report = bench.build_report(FIGURES, "stub.csv", [0.5, 0.7], "2-core X", "2024-01-01")
    block = load_script("update_readme").performance_block(report)
    assert "2-core X (2024-01-01)" in block
    assert "| 300 s | ≤ 240 s |" in block
    assert "| × 1.90 | ≤ × 2.5 |" in block and "| × 2.60 | ≤ × 2.5 |" in block
    old = load_script("update_readme").performance_block({**report, "figures": {"grid_s": 20}})
    assert "| 20 s | ≤ 60 s |" in old and "| not measured | ≤ 240 s |" in old


def test_machine_string(bench):
    text = bench.machine()
    assert re.match(r"\d+-core .+, \d+ GiB RAM, Python 3\.\d+, TensorFlow \d+\.\d+$", text)


def test_the_measurements_run_on_the_project_api(bench, monkeypatch):
    """measure_fits and measure_step against the real helpers (short fits, no timing claims):
    a change of the project's API (e.g. the preprocessor's output type) fails here, not
    half-way through a 30-minute `make bench`."""
    import numpy as np

    import helpers

    songs = helpers.add_features(helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data)
    train, _ = helpers.split_train_test(songs)
    seen, make_mlp = [], helpers.make_mlp

    def naive_fit(X, y, epochs=100, batch_size=32):
        assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.shape[0] == len(train)
        seen.append(epochs)

    monkeypatch.setattr(bench, "naive_fit", naive_fit)
    monkeypatch.setattr(helpers, "make_mlp", lambda fs: make_mlp(fs, epochs=1))
    monkeypatch.setattr(bench, "measure_step", lambda *_: {"step_ms": 0.5})
    figures = bench.measure_fits(train)
    assert seen == [100] * (bench.REPEATS + 1) + [20, 20]
    assert figures["fast_fit_s"] > 0 and figures["naive_grid_s"] > 0 and figures["step_ms"] == 0.5
    monkeypatch.undo()
    X = helpers.make_preprocessor("full").fit_transform(train[helpers.feature_columns("full")])
    step = bench.measure_step(X.astype(np.float32), np.zeros(len(X), np.float32), train)
    assert step["step_ms"] > 0 and step["grid_steps"] > 10_000
