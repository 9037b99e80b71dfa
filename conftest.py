"""Repo-wide pytest setup.

* Notebook validation (nbval, pyproject.toml) needs the real Kaggle file at
  data/spotify-2023.csv; without it (or with another file there) every notebook item is
  skipped, with a reason that says how to get it. The plain tests in tests/ always run.
* Workers and kernels inherit os.environ: no TensorFlow start-up messages in cell outputs,
  PYTHONHASHSEED=0 as scripts/run_series.py --refresh uses it.
* Another CPU, emulated (emulate(); the pytest header says what): numpy one dispatch level
  below this CPU's own and oneDNN at SSE41. OpenBLAS stays native (make drift covers it).
  TEST_EMULATE=native turns it off; a mechanism's own variable, when set, is kept.
* The rule (tests/contract.py) for every code cell's text output (nbval-ignore-output cells
  stay ignored) and, at the end, for the reports the notebooks wrote into a copy of reports/.
* pytest-xdist (`-n 2 --dist loadfile`): each file on one worker, the longest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
RAW_DATA = ROOT / "data" / "spotify-2023.csv"
# helpers.REAL_SHA256, kept here too: collection works while helpers.py cannot be imported
FALLBACK_REAL_SHA256 = "26fd1292465877c24a9f5bfc6bf933c0715356a9c7d3197f2c4bc8b1a668a215"

GET_DATA_HELP = (
    "download it with the Kaggle CLI: `kaggle datasets download -d nelgiriyewithana/top-spotify-"
    "songs-2023 -p data --unzip` (or with kagglehub: `kagglehub.dataset_download('nelgiriyewith"
    "ana/top-spotify-songs-2023')` and copy spotify-2023.csv into data/)")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("PYTHONHASHSEED", "0")

sys.path.insert(0, str(ROOT / "tests"))
import contract  # noqa: E402  (tests/contract.py: needs tests/ on sys.path)

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


# At import: before any worker or notebook kernel starts (they inherit os.environ).
CPU_HEADER = emulate()


def pytest_addoption(parser):
    parser.addoption("--reports-exact", action="store_true", default=False,
                     help="require reports/ to come out byte-identical instead of under the "
                          "contract's rule (also: REPORTS_EXACT=1)")


def pytest_report_header(config):
    return [CPU_HEADER, f"reproducibility contract: {contract.load_contract().source}"]


def real_sha256() -> str:
    """The expected sha256 of the real file: helpers.REAL_SHA256 if importable, else ours."""
    try:
        from helpers import REAL_SHA256
    except Exception:  # helpers missing or broken: its own tests will say so
        return FALLBACK_REAL_SHA256
    return REAL_SHA256


def notebook_skip_reason() -> str | None:
    """Why the notebooks cannot be validated here, or None when the real file is present."""
    if not RAW_DATA.is_file():
        return f"real data file {RAW_DATA.relative_to(ROOT)} is absent; {GET_DATA_HELP}"
    actual, expected = hashlib.sha256(RAW_DATA.read_bytes()).hexdigest(), real_sha256()
    if actual != expected:
        return (f"{RAW_DATA.relative_to(ROOT)} is not the original Kaggle file (sha256 "
                f"{actual}, expected {expected}); replace it with the original: {GET_DATA_HELP}")
    return None


def _is_committed_notebook(item) -> bool:
    return item.path.suffix == ".ipynb" and (ROOT / "notebooks") in item.path.parents


# The longest files first, so that both xdist workers finish together (--no-loadscope-reorder
# keeps the order). Measured: 05 ~5 min, the smoke run, 04, 06 ~2 min, the others less.
LONGEST_FIRST = ["tests/test_series_smoke.py", "notebooks/05_grid.ipynb",
                 "notebooks/06_results.ipynb", "notebooks/04_mlp.ipynb", "tests/test_mlp.py",
                 "tests/test_contract.py", "notebooks/03_baseline.ipynb"]


def run_order(item) -> int:
    """Position of an item's file in LONGEST_FIRST (others after, in collection order)."""
    where = item.path.relative_to(ROOT).as_posix() if item.path.is_relative_to(ROOT) else ""
    return LONGEST_FIRST.index(where) if where in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Longest files first; the rule for every nbval cell; skip every nbval item of
    notebooks/*.ipynb when the real data file is missing."""
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
    """Wrap nbval's IPyNbCell.compare_outputs for one cell (nbval's runtest calls
    self.compare_outputs(fresh, committed) and prints self.comparison_traceback on False):
    first the rule on the sanitized texts (floats within T, counts and text exact), then
    nbval's own comparison on copies whose floats are masked (output kinds, other MIME types)."""
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


# Reports check. The notebooks nbval re-executes write their metrics and figures into a copy
# of reports/ (SERIES_REPORTS_DIR, read by helpers.resolve_run; filled with the committed files
# at the start, so a notebook validated alone finds its inputs), never into reports/ itself.
# At the end the copy must reproduce the committed files under the rule (--reports-exact or
# REPORTS_EXACT=1: byte identity). Any difference fails the run.
REPORTS = ROOT / "reports"
FRESH_REPORTS = ROOT / "build" / "nbval-reports"
CHECKED_FOLDERS = ["metrics", "figures"]  # not benchmark.json, drift.json: measurements
# A test that starts a pytest session of its own (test_contract.py) must not refill the
# copy of the session around it: the outer session marks the environment, the inner one then
# works in a private copy.
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


def is_xdist_worker(config) -> bool:
    """True in a pytest-xdist worker (the reports check runs once, in the main process)."""
    return hasattr(config, "workerinput")


def rebuild_cleaned_data() -> str | None:
    """Build the cleaned data that 02 writes and 03-06 read (build/real/) if it is missing, as
    02 would (`pytest notebooks/04_mlp.ipynb` on a fresh clone); a line saying so, or None."""
    if notebook_skip_reason() is not None:
        return None
    import helpers

    path = helpers.resolve_run(RAW_DATA).processed_path
    if path.is_file():
        return None
    songs = helpers.save_clean(helpers.clean(helpers.load_raw(RAW_DATA)), path)
    return (f"cleaned data: {songs.relative_to(ROOT)} was missing; rebuilt it from "
            f"{RAW_DATA.relative_to(ROOT)} as notebook 02 does")


def pytest_sessionstart(session):
    if is_xdist_worker(session.config):
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
    if not is_xdist_worker(config):
        _MAIN.append(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A committed notebook's kernel (started by nbval in the setup of its first cell) runs its
    joblib-parallel fits (N_JOBS) one after another: the two xdist workers already keep both
    cores busy (measured: no slower). JOBLIB_MULTIPROCESSING=0 (joblib's documented switch) is
    set only while that kernel starts, so the tests of parallel search keep their processes.
    One process and two give the same results (tests/test_mlp.py)."""
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
    """Messages for each notebook that ran but did not rewrite its metrics in the copy: then
    the check below would compare the committed file with itself and prove nothing."""
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
