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
    only silenced by turning oneDNN off, which also makes results independent of the CPU's
    instruction set (oneDNN's summation order differs between CPUs). Measured, TF 2.21.
  - PYTHONHASHSEED=0: fixes the iteration order of sets of strings (and anything derived
    from it) in the kernel, so printed output is the same as in the committed notebooks,
    which scripts/run_series.py --refresh executes with the same setting.
"""

from __future__ import annotations

import hashlib
import os
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


def pytest_collection_modifyitems(config, items):
    """Skip every nbval item (cells of notebooks/*.ipynb) when the real data file is missing."""
    notebook_items = [item for item in items if item.path.suffix == ".ipynb"]
    if not notebook_items:
        return
    reason = notebook_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for item in notebook_items:
        item.add_marker(marker)


# Reproducibility check. With the real file, nbval re-executes the committed notebooks with
# their default parameters, which rewrites reports/ (metrics JSON and README figures). Those
# files must come out byte-identical to the committed ones: otherwise the committed results do
# not reproduce. Compared at the end of the session; any difference fails the run.
REPORTS = ROOT / "reports"


def _report_files() -> dict:
    return {p.relative_to(ROOT).as_posix(): p.read_bytes()
            for p in sorted(REPORTS.rglob("*")) if p.is_file() and p.suffix in {".json", ".png"}
            and p.name != "benchmark.json"}


def pytest_sessionstart(session):
    session.config._reports_before = _report_files()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_reports_before", None)
    if before is None or exitstatus != 0:
        return
    after = _report_files()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print("\nnot reproducible: re-executing the notebooks changed these committed files:\n  "
              + "\n  ".join(changed)
              + "\n(if the change is intended, run `make refresh-notebooks` and commit)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
