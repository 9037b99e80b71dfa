"""Tests of the pure parts of scripts/benchmark.py (no timing: the measurements are stubbed)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"naive_fit_s": 12.0, "fast_fit_s": 3.0, "fast_fit_cold_s": 5.12345,
           "grid_s": 48.0, "grid_cold_s": 60.0, "grid_per_fit_s": 0.3,
           "series_s": 200.0, "peak_memory_mb": 1000.0}


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
    stub("measure_fits", ["naive_fit_s", "fast_fit_s", "fast_fit_cold_s"])
    stub("measure_grid", ["grid_s", "grid_cold_s", "grid_per_fit_s"])
    stub("measure_series", ["series_s", "peak_memory_mb"])
    return bench, ran


def test_output_option_writes_documented_layout(stubbed, tmp_path, capsys):
    bench, ran = stubbed
    out = tmp_path / "sub" / "bench.json"
    assert bench.main(["--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "date", "data", "load_average", "figures", "goals"}
    assert list(report["figures"]) == bench.FIGURES
    assert report["goals"] == {"grid_s": 60, "series_s": 180, "peak_memory_mb": 2048}
    assert report["figures"]["speedup_single"] == 4.0
    assert report["figures"]["speedup_grid"] == 40.0
    assert report["figures"]["fast_fit_cold_s"] == 5.123  # rounded to 3 decimals
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"])
    assert len(report["load_average"]) == 2
    assert report["data"].startswith("stub.csv")
    assert ran == ["measure_fits", "measure_grid", "measure_series"]
    table = capsys.readouterr().out
    assert re.search(r"series_s\s+200.0\s+<= 180\s+over goal", table)
    assert re.search(r"grid_s\s+48.0\s+<= 60\s+ok", table)


def test_skip_series(stubbed, tmp_path):
    bench, ran = stubbed
    out = tmp_path / "bench.json"
    bench.main(["--output", str(out), "--skip-series"])
    figures = json.loads(out.read_text())["figures"]
    assert "measure_series" not in ran
    assert figures["series_s"] is None and figures["peak_memory_mb"] is None
    assert figures["grid_s"] == 48.0


def test_report_feeds_the_readme_generator(bench):
    report = bench.build_report(FIGURES, "stub.csv", [0.5, 0.7], "2-core X", "2024-01-01")
    block = load_script("update_readme").performance_block(report)
    assert "2-core X (2024-01-01)" in block
    assert "| 200 s | ≤ 180 s |" in block


def test_machine_string(bench):
    text = bench.machine()
    assert re.match(r"\d+-core .+, \d+ GiB RAM, Python 3\.\d+, TensorFlow \d+\.\d+$", text)
