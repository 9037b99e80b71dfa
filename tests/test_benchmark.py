"""spotify-bench: report and table from stubbed measurements; the measurements on the API."""

import json
import re

import numpy as np

from spotify_streams.commands import benchmark as bench
from spotify_streams.commands import update_readme
from spotify_streams.evaluation import split_train_test

MEASURED = {"measure_fits": {"naive_fit_s": 12.0, "fast_fit_s": 3.0, "fast_fit_cold_s": 5.12345,
                             "naive_grid_s": 1920.0, "grid_floor_s": 40.0,
                             "grid_floor_one_s": 32.0},
            "measure_grid": {"grid_s": 48.0, "grid_busy_s": 45.0, "grid_cold_s": 60.0,
                             "grid_per_fit_s": 0.3},
            "measure_series": {"series_s": 320.0, "peak_memory_mb": 1000.0},
            "measure_contention": {"quick_solo_s": 100.0, "contention_two_runs": 1.9,
                                   "contention_busy_loop": 2.6}}


def test_the_report_its_goals_the_table_and_the_readme_block(monkeypatch, tmp_path, capsys):
    """Speed-ups 12/3 = 4 and 1920/48 = 40, the grid 48/40 = 1.2 and 48/32 = 1.5 times its
    floors; each figure against its goal, in the table and in the README/docs block."""
    ran = []  # every measurement stubbed with its figures in MEASURED; the names of those that ran
    for name, figures in MEASURED.items():
        monkeypatch.setattr(bench, name, lambda *_, n=name, f=figures: ran.append(n) or dict(f))
    monkeypatch.setattr(bench, "measure_scaling", lambda sizes: ran.append(
        "measure_scaling") or {str(n): n / 100 for n in sizes})
    monkeypatch.setattr(bench, "load_train", lambda: (None, "stub.csv (10 cleaned rows)"))

    assert bench.main(["--output", str(out := tmp_path / "sub" / "bench.json")]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "date", "data", "load_average", "figures", "goals",
                           "step_ms_by_cell", "scaling_quick_series_s"}
    assert list(report["figures"]) == bench.FIGURES and report["data"].startswith("stub.csv")
    assert report["goals"] == {"grid_over_floor": 1.25, "series_s": 300, "peak_memory_mb": 1536,
                               "speedup_single": 10, "speedup_grid": 25,
                               "contention_two_runs": 2.5, "contention_busy_loop": 2.5}
    assert report["scaling_quick_series_s"] == {"1000": 10.0, "5000": 50.0, "20000": 200.0}
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"]) and len(report["load_average"]) == 2
    assert ran == ["measure_fits", "measure_grid", "measure_series", "measure_scaling",
                   "measure_contention"]
    table = capsys.readouterr().out
    for row in ["series_s 320.0 <= 300 goal missed", "grid_over_floor 1.2 <= 1.25 ok",
                "speedup_single 4.0 >= 10 goal missed", "speedup_grid 40.0 >= 25 ok",
                "contention_two_runs 1.9 <= 2.5 ok", "contention_busy_loop 2.6 <= 2.5 goal missed",
                "grid_over_floor_one 1.5", "fast_fit_cold_s 5.123"]:  # 5.12345, rounded
        assert re.search(r"\s+".join(map(re.escape, row.split())) + r"\s*$", table, re.M), row
    assert re.match(r"\d+-core .+, \d+ GiB RAM, Python 3\.\d+, TensorFlow \d+\.\d+$",
                    report["machine"])
    block = update_readme.performance_block(report)
    for cell in [f"{report['machine']} ({report['date']})", "| 320 s | ≤ 300 s |",
                 "| × 4.0 | ≥ × 10 |", "| × 1.90 | ≤ × 2.5 |", "| × 2.60 | ≤ × 2.5 |",
                 "| × 1.20 | ≤ × 1.25 |", "| × 1.50 |  |"]:
        assert cell in block, cell
    old = update_readme.performance_block({**report, "figures": {"grid_s": 20}})
    assert "| 20 s |  |" in old and "| not measured | ≤ 300 s |" in old
    ran.clear()
    bench.main(["--output", str(out), "--skip-series"])
    figures = json.loads(out.read_text())["figures"]
    assert not {"measure_series", "measure_scaling", "measure_contention"} & set(ran)
    assert (figures["series_s"], figures["peak_memory_mb"], figures["grid_s"]) == (None, None, 48)


def test_the_measurements_run_on_the_project_api(songs, monkeypatch, tmp_path):
    """measure_fits and steps_child on the package, 1-epoch fits and 20-step timings (these
    once broke `make bench`); the grid's floor from known fold sizes and step costs."""
    train, _ = split_train_test(songs)
    seen, make_mlp = [], bench.make_mlp

    def naive_fit(X, y, epochs=100, batch_size=32):
        assert isinstance(X, np.ndarray) and X.dtype == np.float32 and X.shape[0] == len(train)
        seen.append(epochs)

    monkeypatch.setattr(bench, "naive_fit", naive_fit)
    monkeypatch.setattr(bench, "make_mlp", lambda fs, epochs=100: make_mlp(fs, epochs=1))
    monkeypatch.setattr(bench, "measure_steps", lambda *_: {"step_ms": 0.5})
    figures = bench.measure_fits(train)
    assert seen == [100] * (bench.REPEATS + 1) + [20, 20]
    assert figures["fast_fit_s"] > 0 and figures["naive_grid_s"] > 0 and figures["step_ms"] == 0.5
    assert figures["fit_setup_ms"] > 0
    monkeypatch.setattr(bench, "load_train", lambda: (train, "songs"))
    monkeypatch.setattr(bench, "STEPS", 20)
    bench.steps_child(str(tmp_path / "steps.json"))
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert list(steps) == ["64x16", "64x32", "128x16", "128x32"] and min(steps.values()) > 0
    # two folds of 100 rows: (50 + 100 epochs) x 7 batches of 16 or 4 of 32, x 2 rates x 2
    # dropouts, per width: 2 x (8,400 + 4,800) steps; at 1 ms a step, / 1,000 / 2 processes
    floor = bench.grid_floor([100, 100], dict.fromkeys(steps, 1.0), dict.fromkeys(steps, 2.0))
    assert floor == {"grid_steps": 26_400.0, "grid_floor_one_s": 13.2, "grid_floor_s": 26.4}
