"""Emulated CPU, the contract's rule for nbval cells and reports/, shared fixtures."""

import functools
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


def emulate(environ=os.environ, machine: str | None = None, simd: dict | None = None) -> str:
    """Set the emulation variables (numpy a level below this CPU, oneDNN SSE41); the header."""
    machine = (machine or platform.machine()).lower()
    off = "" if machine in contract.X86 else f" ({machine} is not x86)"
    native = off or environ.get("TEST_EMULATE", "").strip().lower() == "native"
    numpy = [] if native or "NPY_DISABLE_CPU_FEATURES" in environ else contract.numpy_levels(
        simd or contract.simd_extensions())
    parts = []
    for name, variable, levels, why in [
            ("numpy", "NPY_DISABLE_CPU_FEATURES", numpy, "this CPU is at numpy's baseline"),
            ("oneDNN", "ONEDNN_MAX_CPU_ISA", [("SSE41", "SSE41")], ""),
            ("OpenBLAS", "OPENBLAS_CORETYPE", [], "make drift covers OPENBLAS_CORETYPE")]:
        if variable in environ:
            parts.append(f"{name} as set ({variable}={environ[variable]})")
        elif native or not levels:
            parts.append(f"{name} native{off if native else f' ({why})'}")
        else:
            level, environ[variable] = levels[0]
            parts.append(f"{name} {level} ({variable}={environ[variable]})")
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
    """Why the notebooks cannot be validated here, or None."""
    where = RAW_DATA.relative_to(ROOT)
    if not RAW_DATA.is_file():
        return f"real data file {where} is absent. {DOWNLOAD_HINT}"
    if (actual := file_sha256(RAW_DATA)) != REAL_SHA256:
        return (f"{where} is not the original Kaggle file (sha256 {actual}, expected "
                f"{REAL_SHA256}); replace it with the original. {DOWNLOAD_HINT}")
    return None


# The longest first, so that both xdist workers finish together (05 ~5 min, the smoke run...).
LONGEST_FIRST = {ROOT / name: rank for rank, name in enumerate([
    "tests/test_series_run.py", "notebooks/05_grid.ipynb", "notebooks/06_results.ipynb",
    "notebooks/04_mlp.ipynb", "tests/test_mlp.py", "tests/test_contract.py",
    "notebooks/03_baseline.ipynb"])}


def pytest_collection_modifyitems(config, items):
    """Longest files first; the rule for every nbval cell; skip notebooks/ without real data."""
    items.sort(key=lambda item: LONGEST_FIRST.get(item.path, len(LONGEST_FIRST)))  # stable
    reason, the_contract = notebook_skip_reason(), contract.load_contract()
    for item in items:
        if hasattr(item, "compare_outputs"):  # an nbval cell
            item.compare_outputs = functools.partial(compare_under_rule, item, the_contract)
        if reason and item.nodeid.startswith("notebooks/"):  # a committed notebook's cell
            item.add_marker(pytest.mark.skip(reason=reason))


def compare_under_rule(item, the_contract, test, ref, skip_compare=None) -> bool:
    """nbval's compare_outputs wrapped: the rule on the texts, then nbval's on masked floats."""
    where = f"{item.path.name} Cell {item.cell_num}"
    messages = contract.compare_cell_outputs(ref, test, the_contract, item.sanitize, where)
    if messages:
        item.comparison_traceback = [
            f"{where}: outputs break the reproducibility rule (committed vs fresh; floats "
            f"within T = {the_contract.tolerance:g}, {the_contract.source}):", *messages]
        return False
    return type(item).compare_outputs(item, contract.mask_outputs(test, item.sanitize),
                                      contract.mask_outputs(ref, item.sanitize), skip_compare)


# Reports check: the notebooks write into a copy of reports/ (SERIES_REPORTS_DIR); at the end
# it must reproduce the committed files under the rule (--reports-exact: byte identity).
REPORTS = ROOT / "reports"
CHECKED_FOLDERS = ["metrics", "figures"]  # not benchmark.json, drift.json: measurements
# A nested pytest session (test_contract.py) works in a private copy, not the outer one's.
SESSION_MARK = "SERIES_TEST_SESSION"


def _report_files(folder: Path = REPORTS) -> dict:
    """{"reports/metrics/04_mlp.json": bytes, ...} under `folder`."""
    return {f"reports/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for sub in CHECKED_FOLDERS for p in sorted((folder / sub).glob("*"))
            if p.is_file() and p.suffix in {".json", ".png"}}


def report_differences(before: dict, after: dict, exact: bool = False, limit: int = 40) -> list:
    """Messages for each report file that did not reproduce (at most `limit` each)."""
    messages, the_contract = [], None if exact else contract.load_contract()
    for key in sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)):
        old, new = before.get(key), after.get(key)
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
            found = list(filter(None, [contract.compare_figure(
                old, new, Path(key).name, the_contract, ROOT / "build" / "contract-diffs")]))
        messages += found[:limit] + ([f"{key}: ... and {len(found) - limit} more"]
                                     if len(found) > limit else [])
    return messages


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the main process checks
        return
    nested = os.environ.get(SESSION_MARK) == "1"
    fresh = ROOT / "build" / (f"nbval-reports-nested-{os.getpid()}" if nested else "nbval-reports")
    os.environ[SESSION_MARK] = "1"
    os.environ["SERIES_REPORTS_DIR"] = str(fresh)  # inherited by the workers and the kernels
    shutil.rmtree(fresh, ignore_errors=True)
    for sub in [sub for sub in CHECKED_FOLDERS if (REPORTS / sub).is_dir()]:
        shutil.copytree(REPORTS / sub, fresh / sub)
    session.config._reports_check = (fresh, nested, time.time(), _report_files())
    from spotify_streams.config import resolve_run
    from spotify_streams.dataset import load_songs

    if not notebook_skip_reason() and not (run := resolve_run(RAW_DATA)).processed_path.is_file():
        load_songs(run)  # 02's cleaned data, rebuilt as 02 does (a fresh clone), and says so


NOTEBOOKS_RUN = set()  # the committed notebooks that passed (as the main process hears)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A committed notebook's kernel fits in one process (the xdist workers fill the cores)."""
    with pytest.MonkeyPatch.context() as patch:
        if item.nodeid.startswith("notebooks/"):
            patch.setenv("JOBLIB_MULTIPROCESSING", "0")
        return (yield)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and report.nodeid.startswith("notebooks/"):
        NOTEBOOKS_RUN.add(report.nodeid.split("::")[0])


def unwritten_reports(fresh: Path, notebooks_run: set, started: float) -> list[str]:
    """Each notebook that ran but did not rewrite its metrics in the copy."""
    return [f"{path} ran but did not write {metrics}; the reports check would compare the "
            "committed file with itself" for path in sorted(notebooks_run)
            if (REPORTS / "metrics" / (metrics := fresh / "metrics" / f"{Path(path).stem}.json")
                .name).is_file() and (not metrics.is_file() or metrics.stat().st_mtime < started)]


def pytest_sessionfinish(session, exitstatus):
    if (state := getattr(session.config, "_reports_check", None)) is None:
        return
    fresh, nested, started, before = state
    after, problems = _report_files(fresh), unwritten_reports(fresh, NOTEBOOKS_RUN, started)
    if nested:
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


@pytest.fixture
def new_songs(tmp_path):
    """Eight rows of the sample as a user would bring them: no streams column."""
    from spotify_streams.dataset import clean, load_raw

    raw = load_raw(SAMPLE_DATA)
    raw.loc[clean(raw).data["raw_row"].head(8)].drop(columns="streams").to_csv(
        path := tmp_path / "new.csv", index=False)
    return path


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """(output folder, process) of the one quick run on the sample; its inputs unchanged."""
    before = {p: p.read_bytes() for p in [SAMPLE_DATA, *(ROOT / "notebooks").glob("*.ipynb")]}
    out = tmp_path_factory.mktemp("quick-run")
    proc = subprocess.run([sys.executable, "-m", "spotify_streams.commands.run_series", "--data",
                           str(SAMPLE_DATA), "--output", str(out), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in before} == before, "the run modified its inputs"
    return out, proc


def conformal(songs, model, feature_set="full", levels=None):
    """MAPIE's CrossConformalRegressor as 06 builds it (CV+, whole artists) around `model`."""
    from mapie.regression import CrossConformalRegressor
    from sklearn.base import clone
    from sklearn.model_selection import GroupKFold

    from spotify_streams.evaluation import artist_key
    from spotify_streams.features import feature_columns, log_streams
    from spotify_streams.modeling.predict import CONFIDENCE_LEVELS

    return CrossConformalRegressor(
        clone(model), confidence_level=list(levels or CONFIDENCE_LEVELS), method="plus",
        cv=GroupKFold(5, shuffle=True, random_state=1)).fit_conformalize(
        songs[feature_columns(feature_set)], log_streams(songs), groups=artist_key(songs))


def save_fitted(songs, folder, model, feature_set="full", quick=False):
    """`model` fitted and saved as notebook 06 saves one, with its conformal regressor."""
    from spotify_streams.features import feature_columns, log_streams
    from spotify_streams.modeling.predict import save_model

    model.fit(songs[feature_columns(feature_set)], log_streams(songs))
    return save_model(model, folder, feature_set, songs, conformal(songs, model, feature_set),
                      quick=quick)


@pytest.fixture(scope="session")
def saved_models(songs, tmp_path_factory):
    """A folder of small stand-ins for 06's models: final/ (linear), pre-release/ (hgb)."""
    from spotify_streams.modeling.baselines import make_baseline

    folder = tmp_path_factory.mktemp("models")
    save_fitted(songs, folder / "final", make_baseline("linear", "full", seed=1))
    save_fitted(songs, folder / "pre-release", make_baseline(
        "hgb", "pre-release", seed=1, max_depth=3, max_iter=20), "pre-release")
    return folder
