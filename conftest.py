"""Repo-wide pytest setup.

* Notebook validation (nbval, enabled in pyproject.toml) needs the real Kaggle file at
  data/spotify-2023.csv: the committed notebook outputs were made from it. Without it
  (or with a different file there) every notebook item is skipped, with a reason that says
  how to get the file. The plain tests in tests/ always run.
* Environment for the notebook kernels that nbval starts (they inherit os.environ):
  - TF_CPP_MIN_LOG_LEVEL=3 and TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's C++ start-up messages
    go to the kernel's stderr, which ipykernel captures as cell output (with timestamps,
    process ids and the CPU's instruction sets), so nbval's comparison would always fail.
    Level 3 silences the CPU-feature message; the oneDNN notice ignores the level and is
    only silenced by turning oneDNN's graph rewrites off. (Matrix products still run on
    oneDNN's sgemm, whose kernel depends on the CPU: see ONEDNN_MAX_CPU_ISA below.)
  - PYTHONHASHSEED=0: fixes the iteration order of sets of strings (and anything derived
    from it) in the kernel, so printed output is the same as in the committed notebooks,
    which scripts/run_series.py --refresh executes with the same setting.
  - ONEDNN_MAX_CPU_ISA=$TEST_CPU_ISA (default SSE41; x86 only): TensorFlow's matrix products
    run on oneDNN's sgemm even with oneDNN's graph rewrites off, and it picks its kernel by
    the CPU's instruction set. Capping it at an older set makes this machine sum in another
    order, as another CPU would: TF's numbers change in the last bits and training amplifies
    that (measured: scripts/measure_drift.py, reports/drift.json). So by default the notebooks
    are validated as if on another CPU; TEST_CPU_ISA=native validates them as they are.
    (XLA's --xla_cpu_max_isa changes nothing here: the Keras path trains without XLA.)
* Comparison rules (tests/contract.py, "the reproducibility contract"):
  - notebook cells tagged `tf-derived` (cell metadata tags) show numbers TensorFlow trained:
    their outputs are compared with contract.compare_cell_outputs at the printed-number
    tolerance (the loosest metric category, from reports/drift.json); every other cell keeps
    nbval's exact comparison with the sanitizers of tests/nbval_sanitize.cfg.
  - the reports (metrics JSON, README figures) the notebooks write, into a copy of reports/
    (SERIES_REPORTS_DIR=build/nbval-reports), are compared with the committed ones by
    contract.compare_metrics / compare_figure at the end of the session; byte identity on
    request: `pytest --reports-exact` or REPORTS_EXACT=1.
* pytest-xdist (pyproject.toml: `-n 2 --dist loadfile`): each file (a notebook, a test module)
  runs on one worker, in order; files run side by side. The notebooks do not depend on running
  in sequence: 02's cleaned data is rebuilt at the start if missing, and every report a
  notebook reads is in the copy from the start (see pytest_sessionstart). (`--dist loadgroup`
  would be the finer tool, but pytest-xdist 3.8 cannot group under pytest 9.2:
  pytest-dev/pytest-xdist#1386.)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
RAW_DATA = ROOT / "data" / "spotify-2023.csv"
# sha256 of the original Kaggle file (see helpers.REAL_SHA256; kept here too so that
# collection works even while helpers.py cannot be imported).
FALLBACK_REAL_SHA256 = "26fd1292465877c24a9f5bfc6bf933c0715356a9c7d3197f2c4bc8b1a668a215"

GET_DATA_HELP = (
    "download it with the Kaggle CLI: "
    "`kaggle datasets download -d nelgiriyewithana/top-spotify-songs-2023 -p data --unzip` "
    "(or with kagglehub: `kagglehub.dataset_download('nelgiriyewithana/top-spotify-songs-2023')` "
    "and copy spotify-2023.csv into data/)"
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("PYTHONHASHSEED", "0")

# Emulated CPU for TensorFlow (see the module docstring). Done at import, before any notebook
# kernel starts (kernels inherit os.environ) and before TensorFlow's first matrix product.
X86_MACHINES = {"x86_64", "amd64", "i386", "i686", "x86"}
DEFAULT_TEST_CPU_ISA = "SSE41"
KNOWN_ONEDNN_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI",
                     "AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"}


def emulate_cpu(environ=os.environ, machine: str | None = None) -> str:
    """Set ONEDNN_MAX_CPU_ISA=$TEST_CPU_ISA (default SSE41) for everything this session starts;
    return one line that says what was done."""
    isa = (environ.get("TEST_CPU_ISA", DEFAULT_TEST_CPU_ISA).strip()
           or DEFAULT_TEST_CPU_ISA).upper()
    machine = (machine or platform.machine()).lower()
    if isa == "NATIVE":
        return ("CPU for TensorFlow: native (TEST_CPU_ISA=native; ONEDNN_MAX_CPU_ISA="
                f"{environ.get('ONEDNN_MAX_CPU_ISA', 'unset')})")
    if machine not in X86_MACHINES:
        return f"CPU for TensorFlow: native ({machine} is not x86; TEST_CPU_ISA={isa} ignored)"
    if isa not in KNOWN_ONEDNN_ISAS:
        raise pytest.UsageError(f"TEST_CPU_ISA={isa} is not one of oneDNN's instruction sets "
                                f"({', '.join(sorted(KNOWN_ONEDNN_ISAS))}) nor 'native'.")
    environ["ONEDNN_MAX_CPU_ISA"] = isa
    return (f"CPU for TensorFlow: emulating {isa} (ONEDNN_MAX_CPU_ISA={isa}), so TF numbers "
            "differ from this machine's native ones as on another CPU and are checked within "
            "the contract's tolerances; turn off with TEST_CPU_ISA=native")


CPU_HEADER = emulate_cpu()

sys.path.insert(0, str(ROOT / "tests"))
import contract  # noqa: E402  (tests/contract.py: needs tests/ on sys.path)


def pytest_addoption(parser):
    parser.addoption("--reports-exact", action="store_true", default=False,
                     help="require reports/ (metrics JSON, figures) to come out byte-identical "
                          "after the notebooks ran, instead of within the contract's "
                          "tolerances (also: REPORTS_EXACT=1)")


_CONTRACT = []


def the_contract() -> contract.Contract:
    """tests/contract.py's tolerances, read once per session."""
    if not _CONTRACT:
        _CONTRACT.append(contract.load_contract())
    return _CONTRACT[0]


def pytest_report_header(config):
    return [CPU_HEADER, f"reproducibility contract: tolerances {the_contract().source}"]


def real_sha256() -> str:
    """The expected sha256 of the real file: helpers.REAL_SHA256 if importable, else ours."""
    try:
        from helpers import REAL_SHA256
    except Exception:  # helpers missing or broken: its own tests will say so
        return FALLBACK_REAL_SHA256
    return REAL_SHA256


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def notebook_skip_reason() -> str | None:
    """Why the notebooks cannot be validated here, or None when the real file is present."""
    if not RAW_DATA.is_file():
        return f"real data file {RAW_DATA.relative_to(ROOT)} is absent; {GET_DATA_HELP}"
    actual = sha256_of(RAW_DATA)
    expected = real_sha256()
    if actual != expected:
        return (
            f"{RAW_DATA.relative_to(ROOT)} is not the original Kaggle file "
            f"(sha256 {actual}, expected {expected}); replace it with the original: {GET_DATA_HELP}"
        )
    return None


def _is_committed_notebook(item) -> bool:
    return item.path.suffix == ".ipynb" and (ROOT / "notebooks") in item.path.parents


# The longest files first, so that the two xdist workers start on them and finish together
# (pyproject.toml keeps this order: --no-loadscope-reorder). Measured on the 2-core machine:
# 05 ~5 min (its grid in the kernel, fit after fit), the smoke run ~2 min, 04 and 06 ~2 min,
# test_mlp ~1½ min, test_contract ~1 min, 03 ~20 s; everything else is seconds.
LONGEST_FIRST = ["tests/test_series_smoke.py", "notebooks/05_grid.ipynb",
                 "notebooks/06_results.ipynb", "notebooks/04_mlp.ipynb", "tests/test_mlp.py",
                 "tests/test_contract.py", "notebooks/03_baseline.ipynb"]


def run_order(item) -> int:
    """Position of an item's file in LONGEST_FIRST (others after, in collection order)."""
    where = item.path.relative_to(ROOT).as_posix() if item.path.is_relative_to(ROOT) else ""
    return LONGEST_FIRST.index(where) if where in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Skip every nbval item of notebooks/*.ipynb when the real data file is missing; give
    cells tagged tf-derived the contract's tolerant comparison; longest files first."""
    items.sort(key=run_order)  # stable: a file's items keep their order
    for item in items:
        if hasattr(item, "compare_outputs") and contract.is_tf_cell(getattr(item, "cell", {})):
            install_tolerant_comparison(item)
    notebook_items = [item for item in items if _is_committed_notebook(item)]
    if not notebook_items:
        return
    reason = notebook_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in notebook_items:
        item.add_marker(marker)


def install_tolerant_comparison(item) -> None:
    """Wrap nbval's IPyNbCell.compare_outputs for one cell (nbval's runtest calls
    self.compare_outputs(fresh, committed) and prints self.comparison_traceback on False).

    1. contract.compare_cell_outputs on the sanitized texts: text equal up to its numbers,
       numbers within the printed-number tolerance (+ one unit of the last printed digit);
    2. if that passes, nbval's own exact comparison on copies whose numbers are masked:
       everything else (output kinds and counts, other MIME types) stays nbval's business."""
    original = item.compare_outputs
    tolerance = the_contract().for_cell(item.cell)
    where = f"{item.path.name} Cell {item.cell_num} (tagged {contract.TF_TAG})"

    def compare_outputs(test, ref, skip_compare=None):
        messages = contract.compare_cell_outputs(ref, test, tolerance, item.sanitize, where)
        if messages:
            item.comparison_traceback = [
                f"{where}: outputs differ beyond the printed-number tolerance "
                f"{tolerance.describe()} + one unit of the last printed digit "
                f"(committed vs fresh):", *messages]
            return False
        return original(contract.mask_outputs(test, item.sanitize),
                        contract.mask_outputs(ref, item.sanitize), skip_compare)

    item.compare_outputs = compare_outputs


# Reproducibility check. With the real file, nbval re-executes the committed notebooks with
# their default parameters, which write the committed results (metrics JSON, README figures).
# In the test session they write a copy instead: SERIES_REPORTS_DIR (read by
# helpers.resolve_run) points them at build/nbval-reports/, filled with the committed files at
# the start (a notebook validated alone reads its inputs there), so reports/ itself is never
# written and `git status` stays clean. At the end the copy must reproduce the committed files
# under the contract (tests/contract.py): exact for everything scikit-learn computes and for
# every non-metric value, TF-derived metrics and figures within the measured tolerances. With
# --reports-exact (or REPORTS_EXACT=1): byte identity. Any difference fails the run.
REPORTS = ROOT / "reports"
FRESH_REPORTS = ROOT / "build" / "nbval-reports"
CHECKED_FOLDERS = ["metrics", "figures"]  # not benchmark.json, drift.json: measurements
# A test that starts a pytest session of its own (test_nbval_hook_...) must not refill the
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
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    for sub in CHECKED_FOLDERS:
        if (source / sub).is_dir():
            shutil.copytree(source / sub, target / sub)
    return _report_files(source)


def reports_exact(config) -> bool:
    return bool(config.getoption("--reports-exact", default=False)) or \
        os.environ.get("REPORTS_EXACT", "") not in ("", "0")


def report_differences(before: dict, after: dict, exact: bool = False) -> list[str]:
    """Messages for every committed report file that did not reproduce."""
    messages = []
    loaded = None
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if old is None or new is None:
            messages.append(f"{key}: {'created' if old is None else 'deleted'} by the run")
        elif exact:
            messages.append(f"{key}: bytes differ (--reports-exact)")
        elif key.endswith(".json"):
            loaded = loaded or the_contract()
            try:
                messages += contract.compare_metrics(Path(key).name, json.loads(old),
                                                     json.loads(new), loaded)
            except ValueError as exc:
                messages.append(f"{key}: not valid JSON after the run ({exc})")
        else:
            loaded = loaded or the_contract()
            message = contract.compare_figure(old, new, Path(key).name, loaded,
                                              diff_dir=ROOT / "build" / "contract-diffs")
            if message:
                messages.append(message)
    return messages


def is_xdist_worker(config) -> bool:
    """True in a pytest-xdist worker: the reports check runs once, in the main process, which
    starts before the workers and ends after them."""
    return hasattr(config, "workerinput")


def rebuild_cleaned_data() -> str | None:
    """Notebooks 03-06 read the cleaned data that 02 writes (build/real/, not committed). When
    they are validated without 02 (`pytest notebooks/04_mlp.ipynb` on a fresh clone), build it
    first, as 02 would, so that their outputs match; returns a line saying so, or None."""
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
    session.config._started = time.time()
    session.config._notebooks_run = set()
    session.config._reports_before = copy_committed_reports(target=fresh)
    note = rebuild_cleaned_data()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if note and reporter is not None:
        reporter.write_line(note)


_MAIN = []  # the main process's config (not set in xdist workers)


def pytest_configure(config):
    if not is_xdist_worker(config):
        _MAIN.append(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A committed notebook's kernel (started by nbval in the setup of its first cell) runs
    the notebook's joblib-parallel fits (N_JOBS) one after another: the two xdist workers
    already keep both cores busy, and a kernel's own worker processes would only add their
    TensorFlow imports and contention (measured: the suite ran no slower sequentially). joblib's
    documented switch JOBLIB_MULTIPROCESSING=0 reaches only that kernel: it is set while the
    kernel starts and removed again, so the tests of parallel search keep their processes.
    Outputs do not depend on it: one process and two give the same search table and the same
    fits (tests/test_mlp.py)."""
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
        import shutil

        shutil.rmtree(fresh, ignore_errors=True)
    if after == before and not problems:
        return
    exact = reports_exact(session.config)
    messages = problems + report_differences(before, after, exact)
    changed = [key for key in before.keys() | after.keys() if before.get(key) != after.get(key)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    note = (f"reports/: {len(changed)} file(s) came out different"
            f"{' within the contract' if not messages else ''} (this run's versions: "
            f"{fresh}; reports/ itself is never written by the tests)")
    if reporter is not None:
        reporter.write_line(note)
    if not messages:
        return
    source = "byte identity" if exact else f"tolerances {the_contract().source}"
    text = ("\nnot reproducible: re-executing the notebooks changed the committed reports "
            f"({source}):\n  " + "\n  ".join(m.replace("\n", "\n    ") for m in messages)
            + "\n(if the change is intended, run `make refresh-notebooks` and commit)")
    if reporter is not None:
        reporter.write_line(text)
    else:
        print(text)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
