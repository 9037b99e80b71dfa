"""Repo-wide pytest setup.

* Notebook validation (nbval) needs the real Kaggle file at data/spotify-2023.csv; without it
  every notebook item is skipped, saying how to get it. The tests in tests/ always run.
* Another CPU, emulated (emulate(); the pytest header says what): numpy one dispatch level
  below this CPU's own, oneDNN at SSE41, OpenBLAS native (make drift covers it);
  TEST_EMULATE=native turns it off, a mechanism's own variable is kept. Then
  configure_runtime() sets the rest; workers and kernels inherit them all.
* The rule (spotify_streams/contract.py) for every code cell's text output and, at the end,
  for the reports the notebooks wrote into a copy of reports/.
* pytest-xdist (`-n 2 --dist loadfile`): each file on one worker, the longest first.
* Shared fixtures: `songs` (the cleaned synthetic sample) and `quick_run` (the one smoke run,
  used by tests/test_series_run.py only, so xdist runs it once).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotify_streams import contract
from spotify_streams.config import DOWNLOAD_HINT, RAW_DATA, REAL_SHA256, SAMPLE_DATA, file_sha256
from spotify_streams.runtime import configure_runtime

ROOT = Path(__file__).resolve().parent
ONEDNN_DEFAULT = "SSE41"

def emulate(environ=os.environ, machine: str | None = None, simd: dict | None = None) -> str:
    """Set the emulation variables for everything this session starts (by default numpy one
    level below this CPU's own, oneDNN at SSE41); return the header line that says what."""
    machine = (machine or platform.machine()).lower()
    native = environ.get("TEST_EMULATE", "").strip().lower() == "native"
    x86 = machine in contract.X86
    parts = []
    for name, variable in (("numpy", "NPY_DISABLE_CPU_FEATURES"),
                           ("oneDNN", "ONEDNN_MAX_CPU_ISA"), ("OpenBLAS", "OPENBLAS_CORETYPE")):
        if variable in environ:
            parts.append(f"{name} as set ({variable}={environ[variable]})")
        elif native or not x86:
            parts.append(f"{name} native" + ("" if x86 else f" ({machine} is not x86)"))
        elif name == "numpy":
            levels = contract.numpy_levels(simd or contract.simd_extensions())
            if levels:
                environ[variable] = levels[0][1]
                parts.append(f"numpy {levels[0][0]} ({variable}={levels[0][1]})")
            else:
                parts.append("numpy native (this CPU is at numpy's baseline)")
        elif name == "oneDNN":
            environ[variable] = ONEDNN_DEFAULT
            parts.append(f"oneDNN {ONEDNN_DEFAULT} ({variable}={ONEDNN_DEFAULT})")
        else:
            parts.append("OpenBLAS native (make drift covers OPENBLAS_CORETYPE)")
    if any(" native" not in part for part in parts):
        return f"emulating another CPU: {', '.join(parts)}; TEST_EMULATE=native to test as this CPU"
    return f"testing as this CPU: {', '.join(parts)}"

# At import, before any worker or kernel starts; configure_runtime keeps emulate's variables.
CPU_HEADER = emulate()
configure_runtime()

def pytest_addoption(parser):
    parser.addoption("--reports-exact", action="store_true", default=False, help="require "
                     "reports/ byte-identical, not under the rule (also: REPORTS_EXACT=1)")

def pytest_report_header(config):
    return [CPU_HEADER, f"reproducibility contract: {contract.load_contract().source}"]

def notebook_skip_reason() -> str | None:
    """Why the notebooks cannot be validated here, or None when the real file is present."""
    where = RAW_DATA.relative_to(ROOT)
    if not RAW_DATA.is_file():
        return f"real data file {where} is absent. {DOWNLOAD_HINT}"
    if (actual := file_sha256(RAW_DATA)) != REAL_SHA256:
        return (f"{where} is not the original Kaggle file (sha256 {actual}, expected "
                f"{REAL_SHA256}); replace it with the original. {DOWNLOAD_HINT}")
    return None

def _is_committed_notebook(item) -> bool:
    return item.path.suffix == ".ipynb" and (ROOT / "notebooks") in item.path.parents

# The longest files first, so that both xdist workers finish together (--no-loadscope-reorder
# keeps the order): 05 ~5 min, the smoke run, 04, 06 ~2 min, the others less.
LONGEST_FIRST = ["tests/test_series_run.py", "notebooks/05_grid.ipynb",
                 "notebooks/06_results.ipynb", "notebooks/04_mlp.ipynb", "tests/test_mlp.py",
                 "tests/test_contract.py", "notebooks/03_baseline.ipynb"]

def run_order(item) -> int:
    """Position of an item's file in LONGEST_FIRST (others after, in collection order)."""
    where = item.path.relative_to(ROOT).as_posix() if item.path.is_relative_to(ROOT) else ""
    return LONGEST_FIRST.index(where) if where in LONGEST_FIRST else len(LONGEST_FIRST)

def pytest_collection_modifyitems(config, items):
    """Longest files first; the rule for every nbval cell; skip notebooks/ without real data."""
    items.sort(key=run_order)  # stable: a file's items keep their order
    the_contract = contract.load_contract() if any(hasattr(i, "compare_outputs")
                                                   for i in items) else None
    for item in items:
        if hasattr(item, "compare_outputs"):
            install_rule(item, the_contract)
    reason = notebook_skip_reason()
    for item in items:
        if reason and _is_committed_notebook(item):
            item.add_marker(pytest.mark.skip(reason=reason))

def install_rule(item, the_contract: contract.Contract) -> None:
    """Wrap nbval's IPyNbCell.compare_outputs(fresh, committed) for one cell: first the rule on
    the sanitized texts (floats within T, counts and text exact; comparison_traceback says
    why), then nbval's own comparison on copies whose floats are masked."""
    original = item.compare_outputs
    where = f"{item.path.name} Cell {item.cell_num}"

    def compare_outputs(test, ref, skip_compare=None):
        messages = contract.compare_cell_outputs(ref, test, the_contract, item.sanitize, where)
        if messages:
            item.comparison_traceback = [
                f"{where}: outputs break the reproducibility rule (committed vs fresh; floats "
                f"within T = {the_contract.tolerance:g}, {the_contract.source}):", *messages]
            return False
        return original(contract.mask_outputs(test, item.sanitize),
                        contract.mask_outputs(ref, item.sanitize), skip_compare)

    item.compare_outputs = compare_outputs

# Reports check: the notebooks nbval re-executes write into a copy of reports/
# (SERIES_REPORTS_DIR, read by config.resolve_run, filled with the committed files first), never
# into reports/. At the end the copy must reproduce the committed files under the rule
# (--reports-exact or REPORTS_EXACT=1: byte identity); any difference fails the run.
REPORTS = ROOT / "reports"
FRESH_REPORTS = ROOT / "build" / "nbval-reports"
CHECKED_FOLDERS = ["metrics", "figures"]  # not benchmark.json, drift.json: measurements
# A nested pytest session (test_contract.py) works in a private copy, not the outer one's.
SESSION_MARK = "SERIES_TEST_SESSION"

def _report_files(folder: Path = REPORTS) -> dict:
    """{"reports/metrics/04_mlp.json": bytes, ...} of the checked files under `folder`."""
    return {f"reports/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for sub in CHECKED_FOLDERS for p in sorted((folder / sub).glob("*"))
            if p.is_file() and p.suffix in {".json", ".png"}}

def copy_committed_reports(source: Path = REPORTS, target: Path = FRESH_REPORTS) -> dict:
    """Replace `target` with a copy of the checked folders of `source`; return their files."""
    shutil.rmtree(target, ignore_errors=True)
    for sub in CHECKED_FOLDERS:
        if (source / sub).is_dir():
            shutil.copytree(source / sub, target / sub)
    return _report_files(source)

def report_differences(before: dict, after: dict, exact: bool = False, limit: int = 40) -> list:
    """Messages for each committed report file that did not reproduce (at most `limit` each)."""
    messages, the_contract = [], None if exact else contract.load_contract()
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if old is None or new is None:
            found = [f"{key}: {'created' if old is None else 'deleted'} by the run"]
        elif exact:
            found = [f"{key}: bytes differ (--reports-exact)"]
        elif key.endswith(".json"):
            try:
                found = contract.compare_metrics(Path(key).name, json.loads(old),
                                                 json.loads(new), the_contract)
            except ValueError as exc:
                found = [f"{key}: not valid JSON after the run ({exc})"]
        else:
            found = [contract.compare_figure(old, new, Path(key).name, the_contract,
                                             diff_dir=ROOT / "build" / "contract-diffs")]
        found = [m for m in found if m]
        messages += found[:limit] + ([f"{key}: ... and {len(found) - limit} more"]
                                     if len(found) > limit else [])
    return messages

def rebuild_cleaned_data() -> str | None:
    """Build the cleaned data 02 writes and 03-06 read if it is missing (`pytest
    notebooks/04_mlp.ipynb` on a fresh clone); a line saying so, or None."""
    if notebook_skip_reason() is not None:
        return None
    from spotify_streams.config import resolve_run
    from spotify_streams.dataset import clean, load_raw, save_clean

    path = resolve_run(RAW_DATA).processed_path
    if path.is_file():
        return None
    songs = save_clean(clean(load_raw(RAW_DATA)), path)
    return (f"cleaned data: {songs.relative_to(ROOT)} was missing; rebuilt it from "
            f"{RAW_DATA.relative_to(ROOT)} as notebook 02 does")

def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the main process checks
        return
    nested = os.environ.get(SESSION_MARK) == "1"
    fresh = ROOT / "build" / f"nbval-reports-nested-{os.getpid()}" if nested else FRESH_REPORTS
    os.environ[SESSION_MARK] = "1"
    os.environ["SERIES_REPORTS_DIR"] = str(fresh)  # inherited by the workers and the kernels
    session.config._fresh_reports, session.config._nested = fresh, nested
    session.config._started, session.config._notebooks_run = time.time(), set()
    session.config._reports_before = copy_committed_reports(target=fresh)
    note, reporter = rebuild_cleaned_data(), session.config.pluginmanager.get_plugin(
        "terminalreporter")
    if note and reporter is not None:
        reporter.write_line(note)

_MAIN = []  # the main process's config (not set in xdist workers)

def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        _MAIN.append(config)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A committed notebook's kernel (started in its first cell's setup) runs its fits one after
    another (JOBLIB_MULTIPROCESSING=0 while it starts): the two xdist workers keep both cores
    busy already; tests/test_mlp.py shows one process and two give the same results."""
    if not _is_committed_notebook(item):
        return (yield)
    os.environ["JOBLIB_MULTIPROCESSING"] = "0"
    try:
        return (yield)
    finally:
        del os.environ["JOBLIB_MULTIPROCESSING"]

def pytest_runtest_logreport(report):
    """Remember which committed notebooks ran (main process: xdist forwards the reports)."""
    if (_MAIN and report.when == "call" and report.passed
            and report.nodeid.startswith("notebooks/")):
        _MAIN[0]._notebooks_run.add(report.nodeid.split("::")[0])

def unwritten_reports(fresh: Path, notebooks_run: set, started: float) -> list[str]:
    """Each notebook that ran but did not rewrite its metrics in the copy (the check would
    compare the committed file with itself)."""
    messages = []
    for nodepath in sorted(notebooks_run):
        metrics = fresh / "metrics" / f"{Path(nodepath).stem}.json"
        if (REPORTS / "metrics" / metrics.name).is_file() and (
                not metrics.is_file() or metrics.stat().st_mtime < started):
            messages.append(f"{nodepath} ran but did not write {metrics}; "
                            "the reports check would compare the committed file with itself")
    return messages

def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_reports_before", None)
    if before is None:
        return
    fresh = session.config._fresh_reports
    after = _report_files(fresh)
    problems = unwritten_reports(fresh, session.config._notebooks_run, session.config._started)
    if session.config._nested:
        shutil.rmtree(fresh, ignore_errors=True)
    if after == before and not problems:
        return
    exact = session.config.getoption("--reports-exact", default=False) or \
        os.environ.get("REPORTS_EXACT", "") not in ("", "0")
    messages = problems + report_differences(before, after, exact)
    changed = [key for key in before.keys() | after.keys() if before.get(key) != after.get(key)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else print
    write(f"reports/: {len(changed)} file(s) came out different"
          f"{' within the contract' if not messages else ''} (this run's versions: {fresh}; "
          "reports/ itself is never written by the tests)")
    if not messages:
        return
    source = "byte identity" if exact else contract.load_contract().source
    write("\nnot reproducible: re-executing the notebooks changed the committed reports "
          f"({source}):\n  " + "\n  ".join(m.replace("\n", "\n    ") for m in messages)
          + "\n(if the change is intended, run `make refresh-notebooks` and commit)")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

@pytest.fixture(scope="session")
def songs():
    """The synthetic sample, cleaned, with the derived inputs."""
    from spotify_streams.dataset import clean, load_raw
    from spotify_streams.features import add_features

    return add_features(clean(load_raw(SAMPLE_DATA)).data)

@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """(output folder, process) of the one smoke run: quick, on the synthetic sample; it leaves
    its inputs (the sample, notebooks/) byte-identical."""
    before = {p: p.read_bytes() for p in [SAMPLE_DATA, *(ROOT / "notebooks").glob("*.ipynb")]}
    out = tmp_path_factory.mktemp("quick-run")
    proc = subprocess.run([sys.executable, "-m", "spotify_streams.commands.run_series", "--data",
                           str(SAMPLE_DATA), "--output", str(out), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in before} == before, "the run modified its inputs"
    return out, proc
