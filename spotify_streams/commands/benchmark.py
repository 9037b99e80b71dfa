"""Time the Keras paths, the original grid and the whole series; write reports/benchmark.json.

    spotify-bench [--output reports/benchmark.json] [--skip-series]
                  [--scaling-rows 1000,5000,20000]      (also: python scripts/benchmark.py ...)

All figures come from one run on the same data: data/spotify-2023.csv (cleaned) if present,
else the synthetic sample. Timings are wall-clock seconds; the load average is recorded at the
start and end so readers can judge how noisy the machine was. Peak memory is the largest RSS of
any process of the series run (the notebook kernels included): os.wait4 on the driver returns
its rusage including every descendant it waited for, and jupyter_client waits for its kernels.
The naive grid is an estimate, not a run: the original report's way (plain model.fit, one
configuration after another) timed per epoch at each batch size, summed over the 160 fits.
The grid's floor is what Keras's own training step alone costs it: for each of its 160 fits,
its training steps (epochs × batches per epoch) × the cost of one step of that width and batch
size on a warmed model, summed and ÷ the 2 processes. The step costs are measured twice, in a
fresh process alone and in two fresh processes at once (as the grid runs them); grid_floor_s is
the second, grid_floor_one_s the first, and grid_s / grid_floor_s says what per-fit set-up,
worker start-up and the machine's load add to Keras's own steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from spotify_streams.config import RAW_DATA, REPORTS_DIR, ROOT, SAMPLE_DATA
from spotify_streams.dataset import clean, load_raw
from spotify_streams.evaluation import cv_splits, split_train_test
from spotify_streams.features import add_features, feature_columns, log_streams, make_preprocessor
from spotify_streams.modeling.network import STEPS_PER_EXECUTION, build_mlp, make_mlp
from spotify_streams.modeling.selection import grid_param
from spotify_streams.runtime import configure_runtime
from spotify_streams.search_spaces import ORIGINAL_GRID

DEFAULT_OUTPUT = REPORTS_DIR / "benchmark.json"
# The commands run as modules of the installed package (the same as the spotify-* entry points)
RUN_SERIES = [sys.executable, "-m", "spotify_streams.commands.run_series"]
SYNTHETIC_SAMPLE = [sys.executable, "-m", "spotify_streams.commands.synthetic_sample"]
GOALS = {"grid_over_floor": 1.25, "series_s": 300, "peak_memory_mb": 1536, "speedup_single": 10,
         "speedup_grid": 25, "contention_two_runs": 2.5, "contention_busy_loop": 2.5}
FIGURES = ["naive_fit_s", "fast_fit_s", "fast_fit_cold_s", "fit_setup_ms", "naive_grid_s",
           "grid_s", "grid_cold_s", "grid_per_fit_s", "grid_busy_s", "step_ms", "step_ms_two",
           "grid_steps", "grid_floor_one_s", "grid_floor_s", "grid_over_floor",
           "grid_over_floor_one", "speedup_single", "speedup_grid", "series_s",
           "peak_memory_mb", "quick_solo_s", "contention_two_runs", "contention_busy_loop"]
HIGHER_IS_BETTER = {"speedup_single", "speedup_grid"}
REPEATS = 2  # timed fits after one warm-up; the median is reported
STEPS = 1800  # training steps per timed fit of Keras's own step
GRID_FITS = 32 * 5


def progress(message: str) -> None:
    """Print one progress line at once."""
    print(f"[bench] {message}", flush=True)


def load_average() -> float:
    """The 1-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


def load_train():
    """The training split of the cleaned data, plus a short description of the data."""
    path = RAW_DATA if RAW_DATA.is_file() else SAMPLE_DATA
    df = add_features(clean(load_raw(path)).data)
    train, _ = split_train_test(df)
    return train, f"{path.name} ({len(df)} cleaned rows, {len(train)} training rows)"


def timed(fn) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive_fit(X, y, epochs=100, batch_size=32):
    """The seed's way: a new model, plain model.fit on numpy with validation_split."""
    model = build_mlp(X.shape[1])
    model.fit(X, y, epochs=epochs, batch_size=batch_size, validation_split=0.2, verbose=0)


def measure_fits(train) -> dict:
    """Seconds per 100-epoch fit: the seed's plain model.fit vs the project's make_mlp path,
    and the seed's seconds per epoch at each batch size of the grid (for the naive grid)."""
    import numpy as np

    X_df, y = train[feature_columns("full")], log_streams(train)
    X = make_preprocessor("full").fit_transform(X_df).astype(np.float32)
    y_std = ((y - y.mean()) / y.std()).astype(np.float32)
    progress(f"naive fit (model.fit, {X.shape[0]} rows x {X.shape[1]} inputs): "
             f"1 warm-up + {REPEATS} timed")
    naive = [timed(lambda: naive_fit(X, y_std)) for _ in range(REPEATS + 1)][1:]
    per_epoch = {bs: timed(lambda b=bs: naive_fit(X, y_std, 20, b)) / 20 for bs in (16, 32)}

    def fast(epochs=100):
        make_mlp("full", epochs=epochs).fit(X_df, y)

    progress(f"project fit (make_mlp pipeline): 1 cold + {REPEATS} timed; 1-epoch fits")
    cold = timed(fast)
    warm = [timed(fast) for _ in range(REPEATS)]
    one_epoch = statistics.median(timed(lambda: fast(1)) for _ in range(5))
    grid = ORIGINAL_GRID
    n_configs = np.prod([len(v) for v in grid.values()]) // (len(grid["epochs"])
                                                             * len(grid["batch_size"]))
    naive_grid = 5 * n_configs * sum(e * per_epoch[b] for e in grid["epochs"]
                                     for b in grid["batch_size"])
    steps = measure_steps(train)
    # per-fit set-up: a warm 1-epoch fit beyond its training steps (one process)
    setup = one_epoch - -(-len(X) // 32) * steps["step_ms"] / 1000
    return {"naive_fit_s": statistics.median(naive), "fast_fit_s": statistics.median(warm),
            "fast_fit_cold_s": cold, "naive_grid_s": float(naive_grid),
            "fit_setup_ms": 1000 * setup, **steps}


CELLS = [(n, b) for n in ORIGINAL_GRID["neurons"] for b in ORIGINAL_GRID["batch_size"]]


def steps_child(result_path: str) -> None:
    """In a fresh process: Keras's own training step, milliseconds per step, for each width and
    batch size of the grid: a model compiled as the project compiles it, its step traced by a
    first fit, then the median of REPEATS fits of STEPS steps on the training rows."""
    import numpy as np
    import tensorflow as tf

    train, _ = load_train()
    X = make_preprocessor("full").fit_transform(train[feature_columns("full")])
    X, y = X.astype(np.float32), np.zeros((len(X), 1), np.float32)
    result = {}
    for neurons, batch_size in CELLS:
        model = build_mlp(X.shape[1], neurons, steps_per_execution=STEPS_PER_EXECUTION)

        def steps(n, m=model, b=batch_size):
            data = tf.data.Dataset.from_tensor_slices((X, y)).repeat().batch(b).take(n)
            m.fit(data, epochs=1, verbose=0, shuffle=False)

        steps(512)  # traces the training step
        result[f"{neurons}x{batch_size}"] = 1000 * statistics.median(
            timed(lambda: steps(STEPS)) for _ in range(REPEATS)) / STEPS
    Path(result_path).write_text(json.dumps(result))


def measure_steps(train) -> dict:
    """Keras's step cost per width × batch size, in one fresh process alone and in two at once;
    the grid's training steps and its floor under each (grid_floor)."""
    progress("Keras's own step: one process alone, then two at once")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", __spec__.name, "--steps-child"]
        run_child([*command, f"{tmp}/one.json"])
        pair = [subprocess.Popen([*command, f"{tmp}/two{i}.json"], cwd=ROOT) for i in (1, 2)]
        if any([process.wait() != 0 for process in pair]):
            raise SystemExit("a step-measuring process failed")
        one = json.loads(Path(f"{tmp}/one.json").read_text())
        two = [json.loads(Path(f"{tmp}/two{i}.json").read_text()) for i in (1, 2)]
    two = {cell: statistics.mean(t[cell] for t in two) for cell in one}
    return {"step_ms": one["64x32"], "step_ms_two": two["64x32"],
            "step_ms_by_cell": {"one process": one, "two at once": two},
            **grid_floor([len(tr) for tr, _ in cv_splits(train, n_repeats=1)], one, two)}


def grid_floor(folds: list, one: dict, two: dict) -> dict:
    """The grid's training steps on folds of these training sizes (epochs × batches per epoch,
    over its 160 fits) and its floor under each step cost (milliseconds per width x batch
    size): Σ steps × step cost ÷ 2 processes, in seconds."""
    grid = ORIGINAL_GRID
    per_cell = {f"{neurons}x{b}": len(grid["learning_rate"]) * len(grid["dropout"]) * sum(
        e * math.ceil(n / b) for n in folds for e in grid["epochs"]) for neurons, b in CELLS}

    def floor(ms):
        return sum(per_cell[cell] * ms[cell] for cell in per_cell) / 1000 / 2

    return {"grid_steps": float(sum(per_cell.values())), "grid_floor_one_s": floor(one),
            "grid_floor_s": floor(two)}


def grid_child(result_path: str) -> None:
    """In a fresh process: time notebook 05's search (GridSearchCV, 2 processes)."""
    from sklearn.model_selection import GridSearchCV

    train, _ = load_train()
    search = GridSearchCV(make_mlp("full"),
                          {grid_param(k): v for k, v in ORIGINAL_GRID.items()},
                          scoring="r2", cv=cv_splits(train, n_repeats=1), n_jobs=2,
                          refit=False)
    X, y = train[feature_columns("full")], log_streams(train)
    seconds = timed(lambda: search.fit(X, y))
    times = search.cv_results_["mean_fit_time"] + search.cv_results_["mean_score_time"]
    busy = float(times.sum()) * search.n_splits_ / 2  # the fits and scoring, per process
    Path(result_path).write_text(json.dumps({"grid_s": seconds, "grid_busy_s": busy}))


def run_child(command: list) -> tuple[float, float]:
    """Run a command; wall seconds and peak RSS (MB) over it and its waited-for descendants."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)  # rusage of the child and its descendants
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:3])} failed with exit code {process.returncode}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KB


def measure_grid() -> dict:
    """The seed grid (32 configs x 5 folds) in a fresh subprocess."""
    progress(f"original grid ({GRID_FITS} fits) in a fresh process")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "grid.json"
        cold, _ = run_child([sys.executable, "-m", __spec__.name, "--grid-child", str(result)])
        found = json.loads(result.read_text())
    return {"grid_s": found["grid_s"], "grid_busy_s": found["grid_busy_s"], "grid_cold_s": cold,
            "grid_per_fit_s": found["grid_s"] / GRID_FITS}


def measure_series() -> dict:
    """The whole series under papermill (run_series) into a temporary folder."""
    progress("whole series (run_series) into a temporary folder")
    with tempfile.TemporaryDirectory() as tmp:
        seconds, peak = run_child([*RUN_SERIES, "--output", tmp])
    return {"series_s": seconds, "peak_memory_mb": peak}


def measure_scaling(sizes) -> dict:
    """Quick-mode series on synthetic samples of growing size: seconds per size."""
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            progress(f"quick series on a synthetic sample of {rows} rows")
            csv = Path(tmp) / f"synthetic-{rows}.csv"
            subprocess.run([*SYNTHETIC_SAMPLE, str(csv), "--rows", str(rows)], check=True,
                           cwd=ROOT)
            seconds[str(rows)], _ = run_child([*RUN_SERIES, "--data", str(csv), "--output",
                                               str(Path(tmp) / str(rows)), "--quick"])
    return seconds


def quick_series_command(out: Path) -> list:
    """run_series in quick mode on the committed synthetic sample, into `out`."""
    return [*RUN_SERIES, "--data", str(SAMPLE_DATA), "--output", str(out), "--quick"]


def measure_contention() -> dict:
    """A quick series alone; two at once; one beside a busy loop (a process spinning on one
    core): each contended run's wall time as a multiple of the solo time (the slower of two)."""
    with tempfile.TemporaryDirectory() as tmp:
        progress("contention: a quick series alone")
        solo, _ = run_child(quick_series_command(Path(tmp) / "solo"))
        progress("contention: two quick series at once")
        start = time.perf_counter()
        pair = [subprocess.Popen(quick_series_command(Path(tmp) / f"pair{i}"), cwd=ROOT,
                                 stdout=subprocess.DEVNULL) for i in (1, 2)]
        ends = []
        for process in pair:
            if process.wait() != 0:
                raise SystemExit(f"a concurrent quick series failed ({process.returncode})")
            ends.append(time.perf_counter() - start)
        progress("contention: a quick series beside a busy loop")
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy, _ = run_child(quick_series_command(Path(tmp) / "busy"))
        finally:
            spinner.kill()
            spinner.wait()
    return {"quick_solo_s": solo, "contention_two_runs": max(ends) / solo,
            "contention_busy_loop": busy / solo}


def machine() -> str:
    """E.g. '2-core AMD EPYC, 24 GiB RAM, Python 3.11, TensorFlow 2.21'."""
    cpu = platform.processor() or "unknown CPU"
    ram = "? GiB RAM"
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(ln.split(":", 1)[1].strip() for ln in info.splitlines()
                   if ln.startswith("model name"))
        kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
        ram = f"{kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    tf = "TensorFlow not installed"
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            tf = "TensorFlow " + ".".join(metadata.version(dist).split(".")[:2])
            break
        except metadata.PackageNotFoundError:
            pass
    python = ".".join(platform.python_version_tuple()[:2])
    return f"{os.cpu_count()}-core {cpu}, {ram}, Python {python}, {tf}"


def build_report(figures: dict, data: str, loads: list, machine_text: str, date: str) -> dict:
    """The JSON document: derived speed-ups added, every number rounded to 3 decimals."""
    figures = dict(figures)
    if figures.get("fast_fit_s") and figures.get("naive_fit_s"):
        figures["speedup_single"] = figures["naive_fit_s"] / figures["fast_fit_s"]
    if figures.get("grid_s") and figures.get("naive_grid_s"):
        figures["speedup_grid"] = figures["naive_grid_s"] / figures["grid_s"]
    if figures.get("grid_s") and figures.get("grid_floor_s"):
        figures["grid_over_floor"] = figures["grid_s"] / figures["grid_floor_s"]
        figures["grid_over_floor_one"] = figures["grid_s"] / figures["grid_floor_one_s"]
    rounded = {k: None if figures.get(k) is None else round(figures[k], 3) for k in FIGURES}
    scaling = {rows: round(s, 1) for rows, s in figures.get("scaling", {}).items()}
    cells = {how: {cell: round(ms, 4) for cell, ms in by_cell.items()}
             for how, by_cell in figures.get("step_ms_by_cell", {}).items()}
    return {"machine": machine_text, "date": date, "data": data,
            "load_average": [round(x, 3) for x in loads], "figures": rounded,
            "step_ms_by_cell": cells, "scaling_quick_series_s": scaling, "goals": dict(GOALS)}


def format_table(report: dict) -> str:
    """A compact table of the figures, with 'ok' / 'over goal' where a goal exists."""
    lines = [f"{'figure':<16} {'value':>10}  goal", "-" * 40]
    for key, value in report["figures"].items():
        goal = report["goals"].get(key)
        better = key in HIGHER_IS_BETTER
        met = value is not None and goal is not None and (value >= goal if better
                                                           else value <= goal)
        verdict = "" if goal is None or value is None else (
            f"{'>=' if better else '<='} {goal}  {'ok' if met else 'goal missed'}")
        lines.append(f"{key:<16} {'skipped' if value is None else value:>10}  {verdict}")
    for rows, seconds in report.get("scaling_quick_series_s", {}).items():
        lines.append(f"quick series, {rows:>6} rows: {seconds} s")
    lines.append(f"load average (start, end): {report['load_average']}")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    """Write the report as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    """Run every measurement, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    parser.add_argument("--skip-series", action="store_true", help="skip the slow series runs")
    parser.add_argument("--scaling-rows", default="1000,5000,20000",
                        help="synthetic sample sizes for the quick-series scaling runs")
    parser.add_argument("--grid-child", help=argparse.SUPPRESS)  # internal: fresh-process grid
    parser.add_argument("--steps-child", help=argparse.SUPPRESS)  # internal: step costs
    args = parser.parse_args(argv)
    configure_runtime()  # before TensorFlow is imported; the child processes inherit it
    if args.grid_child or args.steps_child:
        grid_child(args.grid_child) if args.grid_child else steps_child(args.steps_child)
        return 0
    loads = [load_average()]
    progress(f"load average at start: {loads[0]}")
    train, data = load_train()
    progress(f"data: {data}")
    figures = measure_fits(train)
    figures.update(measure_grid())
    if not args.skip_series:
        figures.update(measure_series())
        figures["scaling"] = measure_scaling(int(n) for n in args.scaling_rows.split(","))
        figures.update(measure_contention())
    loads.append(load_average())
    report = build_report(figures, data, loads, machine(),
                          datetime.date.today().isoformat())
    print(f"\n{report['machine']}, {report['date']}\n{format_table(report)}")
    write_report(report, args.output)
    progress(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
