"""Run the whole notebook series (notebooks/NN_*.ipynb) and build one HTML report.

    spotify-run [--data file.csv] [--output build/run] [--quick] [--seed 42] [--jobs N]
                [--only 01,03] [--refresh]          (also: python scripts/run_series.py ...)

Executed copies go to <output>/notebooks/, the report (series_report.build_report) to
<output>/report.html; the notebooks in notebooks/ are never modified, except with --refresh
(maintainer mode: they are re-executed in place, unparameterized, on the real data file).
<output>/RUN_STATUS.json says whether the run is complete: until the last notebook and the
report are written it says "incomplete" (or "failed"/"interrupted"), and which notebooks'
outputs in <output> come from this run.
Exit codes: 0 success, 1 a notebook failed, 2 bad data or bad usage (nothing was run),
130 interrupted (Ctrl-C or SIGTERM; the partial notebook is kept as NN.failed.ipynb).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from spotify_streams.commands.series_report import (  # the report; its table for the summary
    TABLE_CAPTION,
    TEST_SET_NOTE,
    TYPICAL_ERROR_NOTE,
    build_report,
    headline_table,
    takeaway,
)
from spotify_streams.config import (
    DOWNLOAD_HINT,
    RAW_DATA,
    REAL_SHA256,
    ROOT,
    check_parameters,
    data_banner,
    file_sha256,
    resolve_run,
)
from spotify_streams.errors import DataError, ParameterError
from spotify_streams.evaluation import check_data
from spotify_streams.runtime import configure_runtime


class UsageError(Exception):
    """A problem with the arguments or the data: reported as 'error: ...', exit code 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", help="CSV to use (default: data/spotify-2023.csv if present, else the sample)")
    add("--output", default="build/run", help="output folder (default: build/run)")
    add("--quick", action="store_true", help="fast smoke run (fewer repeats and epochs)")
    add("--seed", type=int, default=42, help="random seed for every notebook (default: 42)")
    add("--jobs", type=int, help="processes for the notebooks' parallel fits (N_JOBS; default: "
        "the notebooks' own, 2; with --quick: 1, since starting worker processes costs more "
        "than a smoke run's few short fits)")
    add("--only", help="comma-separated notebook numbers to run, e.g. 01,03")
    add("--refresh", action="store_true",
        help="maintainer: re-execute notebooks/ in place, unparameterized, on the real file")
    add("--notebooks-dir", default=str(ROOT / "notebooks"), help=argparse.SUPPRESS)  # for tests
    return parser.parse_args(argv)


def select_notebooks(folder: Path, only: str | None) -> list[Path]:
    """The notebooks NN_*.ipynb of a folder, sorted, optionally limited to --only numbers."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {part.strip().zfill(2) for part in only.split(",") if part.strip()}
        unknown = wanted - {nb.name[:2] for nb in notebooks}
        if unknown:
            missing = ", ".join(sorted(unknown))
            raise UsageError(f"--only {only}: no notebook numbered {missing} in {folder}")
        notebooks = [nb for nb in notebooks if nb.name[:2] in wanted]
    if not notebooks:
        raise UsageError(f"no notebooks named NN_*.ipynb in {folder}")
    return notebooks


def prepare_run(args: argparse.Namespace):
    """Resolve data and output paths and check the data up front (raises UsageError)."""
    if args.refresh and args.data:
        raise UsageError("--refresh always uses data/spotify-2023.csv; drop --data")
    try:  # the notebooks check them too (papermill -p): one rule, config.check_parameters
        check_parameters(SEED=args.seed, QUICK=args.quick,
                         **({"N_JOBS": args.jobs} if args.jobs is not None else {}))
    except ParameterError as exc:
        raise UsageError(f"{exc}") from exc
    data = Path(args.data).resolve() if args.data else None
    if data is not None and data.is_dir():
        raise UsageError(f"--data {data} is a folder, not a CSV file; pass the CSV file itself")
    if data is not None and not data.is_file():
        raise UsageError(f"data file not found: {data}; pass an existing CSV with --data")
    output = None if args.refresh else Path(args.output).resolve()
    run = resolve_run(data_path=data, output_dir=output)
    if args.refresh:
        real = Path(RAW_DATA)
        actual = file_sha256(real) if real.is_file() else "absent"
        if actual != REAL_SHA256:
            raise UsageError(f"--refresh needs the real data file {real} with sha256 "
                             f"{REAL_SHA256} (found: {actual}). {DOWNLOAD_HINT}")
    try:
        check_data(run.data_path)  # reads only; the CSV is never written
    except DataError as exc:
        raise UsageError(f"{exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {run.data_path}: {exc.strerror or exc}") from exc
    check_output(Path(args.output).resolve())
    return run


def check_output(output: Path) -> None:
    """The output folder exists (created if missing) and takes files, before anything runs."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is an existing file, not a folder; pass a folder "
                         "(it is created if missing)")
    try:
        (output / "notebooks").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output / "notebooks"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to --output {output} ({exc.strerror or exc}); "
                         "pass a folder you can write to") from None


def boxed(text: str) -> str:
    """A warning framed in '!!' lines so it stands out in a console log."""
    import textwrap

    line = "!" * 78
    body = "\n".join(f"!! {part}" for part in textwrap.wrap(text, 74))
    return f"{line}\n{body}\n{line}"


RAW_ROWS_TAG = "raw-rows"  # cells that display rows of the data file (also nbval-ignore-output)
RAW_ROWS_NOTE = ("(output left out of the committed notebook: it shows rows of the Kaggle "
                 "file; run the notebook to see it)\n")


def with_jobs(notebook: Path, parameters: dict, jobs: int | None) -> dict:
    """`parameters`, plus N_JOBS=jobs for a notebook whose parameters cell declares N_JOBS."""
    if jobs is None or not parameters:
        return parameters
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    declared = any("parameters" in c.metadata.get("tags", []) and
                   re.search(r"^N_JOBS\s*=", c.source, re.M) for c in cells)
    return {**parameters, "N_JOBS": jobs} if declared else parameters


class BarRelay:
    """papermill's stderr_file: shows the in-cell progress bars (tqdm on the kernel's stderr in
    parallel.BAR_FORMAT, e.g. parallel.search_progress; each state after a \\r) in this console.
    On a terminal the bar updates live on a line below papermill's bar of the notebook;
    otherwise (a log) only each bar's final line is printed. Other kernel stderr stays in the
    executed notebook only."""

    def __init__(self, live: bool):
        self.live, self.state, self.line = live, None, None

    def write(self, text: str) -> None:
        from tqdm import tqdm

        for part in re.split(r"([\r\n])", text):
            if part == "\r":
                self.state = ""
            elif part == "\n":
                if self.state:  # a bar's final state: one line in the console, like the notebook
                    tqdm.write(f"  {self.state.rstrip()}", file=sys.stdout)
                    if self.line is not None:
                        self.line.set_description_str("")
                self.state = None
            elif self.state is not None:
                self.state += part
        if self.live and self.state:
            if self.line is None:  # below papermill's bar (position 0)
                self.line = tqdm(total=0, position=1, bar_format="{desc}", leave=False)
            self.line.set_description_str(f"  {self.state}")

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        if self.line is not None:
            self.line.close()


def execute(notebook: Path, destination: Path, failed_copy: Path, parameters: dict,
            refresh: bool) -> None:
    """Execute one notebook with papermill into a temp file; os.replace it onto destination on
    success, onto failed_copy on failure (then re-raise). destination is untouched on failure.
    Consecutive stream outputs are merged and their \\r updates collapsed (nbconvert's
    CoalesceStreamsPreprocessor): a progress bar keeps its final line only.
    With refresh, papermill's run metadata (timestamps, durations, empty tag lists) is dropped
    before the replace, so re-executing a committed notebook only changes its outputs."""
    import nbformat
    import papermill
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    temp = destination.with_name(f".{destination.stem}.running.ipynb")
    bars = BarRelay(live=sys.stderr.isatty())
    try:
        papermill.execute_notebook(str(notebook), str(temp), parameters=parameters,
                                   kernel_name="python3", language="python",
                                   cwd=str(notebook.parent),
                                   # no "Kernel is running over TCP" warning per notebook
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                   # on a terminal: one bar per notebook, named
                                   progress_bar={"desc": notebook.stem}
                                   if sys.stderr.isatty() else False,
                                   stderr_file=bars)  # the cells' own bars, under it
    except BaseException:
        if temp.exists():
            os.replace(temp, failed_copy)
        raise
    finally:
        bars.close()
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nbformat.read(temp, as_version=4), {})
    if refresh:
        for holder in [nb, *nb.cells]:
            holder.metadata.pop("papermill", None)
            holder.metadata.pop("execution", None)
            if holder.metadata.get("tags") == []:  # papermill adds an empty list to each cell
                del holder.metadata["tags"]
        for cell in nb.cells:  # rows of the Kaggle file never reach a committed notebook
            if RAW_ROWS_TAG in cell.metadata.get("tags", []):
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=RAW_ROWS_NOTE)]
    nbformat.write(nb, temp)
    os.replace(temp, destination)
    failed_copy.unlink(missing_ok=True)


def describe_failure(name: str, exc: Exception, failed_copy: Path) -> str:
    """Which notebook and cell failed, and with what, for the console."""
    if hasattr(exc, "cell_index"):
        first_line = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        where = f"cell {exc.cell_index} (In [{exc.exec_count}]): {first_line}"
        what = f"{exc.ename}: {exc.evalue}"
    else:
        where, what = "before or outside a cell", f"{type(exc).__name__}: {exc}"
    copy = f"executed copy: {failed_copy}" if failed_copy.exists() else "no executed copy"
    return f"FAILED {name}\n  at {where}\n  {what}\n  {copy}"


def print_summary(run, report: Path, out_notebooks: Path, banner: str) -> None:
    """One screen: where things are and the test-set table of 06_results (the report's)."""
    metrics_dir = Path(run.metrics_dir)
    print(f"\nreport:    {Path(report).resolve().as_uri()}\nnotebooks: {out_notebooks}\n"
          f"metrics:   {metrics_dir}")
    results = metrics_dir / "06_results.json"
    headline = json.loads(results.read_text()).get("headline") if results.is_file() else None
    if not headline:
        print("no headline metrics (06 not run)")
    else:
        columns, rows = headline_table(headline)
        widths = [max(map(len, column)) for column in zip(columns, *rows)]
        print(f"\n{TEST_SET_NOTE}\n{TYPICAL_ERROR_NOTE}\n{TABLE_CAPTION}:\n")
        for cells in [columns, *rows]:
            print("  ".join(f"{text:<{widths[0]}}" if i == 0 else f"{text:>{widths[i]}}"
                            for i, text in enumerate(cells)))
        print("\n" + takeaway(json.loads(results.read_text())))
    if banner:
        print("\n" + boxed(banner))


def write_status(out_dir: Path, status: str, data: Path, done: list, detail: str = "") -> None:
    """RUN_STATUS.json: whether <output> holds one complete run, and which notebooks it ran."""
    text = {"complete": "every output in this folder comes from this run",
            "incomplete": "running: outputs of notebooks not listed in notebooks_done are "
                          "from an earlier run (or missing)"}.get(
        status, f"{detail}; outputs of notebooks not listed in notebooks_done (and "
                "report.html) are from an earlier run (or missing)")
    (out_dir / "RUN_STATUS.json").write_text(json.dumps(
        {"status": status, "data": str(data), "notebooks_done": done, "meaning": text},
        indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: kernel shut down


def main(argv: list[str] | None = None) -> int:
    """Validate the data, run the notebooks in order, build the report, print a summary."""
    args = parse_args(argv)
    try:
        notebooks = select_notebooks(Path(args.notebooks_dir), args.only)
        run = prepare_run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    banner = data_banner(run) if run.is_synthetic else ""  # one text: config.data_banner
    if banner:
        print(boxed(banner))
    out_dir = Path(args.output).resolve()
    out_notebooks = out_dir / "notebooks"
    out_notebooks.mkdir(parents=True, exist_ok=True)
    # The kernels inherit os.environ: the series' runtime settings (runtime.py says which and
    # why); a variable the caller set first (an emulated CPU, `make drift`) is kept.
    configure_runtime()
    parameters = {} if args.refresh else {"DATA_PATH": str(run.data_path),
                                          "OUTPUT_DIR": str(out_dir),
                                          "SEED": args.seed, "QUICK": args.quick}
    jobs = args.jobs if args.jobs is not None else (1 if args.quick else None)
    executed = []
    write_status(out_dir, "incomplete", run.data_path, [])
    signal.signal(signal.SIGTERM, _terminated)
    for number, notebook in enumerate(notebooks, start=1):
        print(f"[{number}/{len(notebooks)}] {notebook.stem} ...", flush=True)
        started = time.monotonic()
        destination = notebook if args.refresh else out_notebooks / notebook.name
        failed_copy = out_notebooks / f"{notebook.stem}.failed.ipynb"
        done = [p.stem for p in executed]
        try:
            execute(notebook, destination, failed_copy, with_jobs(notebook, parameters, jobs),
                    refresh=args.refresh)
        except KeyboardInterrupt:
            write_status(out_dir, "interrupted", run.data_path, done,
                         f"interrupted during {notebook.stem}")
            print(f"interrupted during {notebook.stem}; the partial notebook is {failed_copy}. "
                  f"{out_dir} is incomplete (see RUN_STATUS.json).", file=sys.stderr)
            return 130
        except Exception as exc:
            write_status(out_dir, "failed", run.data_path, done, f"{notebook.stem} failed")
            print(describe_failure(notebook.stem, exc, failed_copy), file=sys.stderr)
            print(f"{out_dir} is incomplete: see RUN_STATUS.json.", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
        print(f"[{number}/{len(notebooks)}] {notebook.stem} done in {seconds:.1f} s", flush=True)
        executed.append(destination)
        write_status(out_dir, "incomplete", run.data_path, [p.stem for p in executed])
    report = out_dir / "report.html"
    build_report(executed, report, metrics_dir=run.metrics_dir, banner=banner,
                 figures_dir=getattr(run, "figures_dir", None),  # tests' stub runs have none
                 data_name=Path(run.data_path).name)
    write_status(out_dir, "complete", run.data_path, [p.stem for p in executed])
    print_summary(run, report, notebooks[0].parent if args.refresh else out_notebooks, banner)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
