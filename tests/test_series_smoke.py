"""The whole series on the synthetic sample (quick mode): it works end to end and shows the
synthetic banner everywhere. (That two runs agree is tested where it is cheaper: identical
Keras fits in two processes in test_mlp.py, the committed notebooks re-executed by nbval.)"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import helpers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_series(out: Path) -> subprocess.CompletedProcess:
    """The main job's driver, quick mode, on the synthetic sample, into `out`."""
    command = [sys.executable, "scripts/run_series.py", "--data", str(helpers.SAMPLE_DATA),
               "--output", str(out), "--quick"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def committed_notebooks() -> dict:
    """The bytes of every notebook in notebooks/."""
    return {p.name: p.read_bytes() for p in (ROOT / "notebooks").glob("*.ipynb")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    sample_before, notebooks_before = helpers.SAMPLE_DATA.read_bytes(), committed_notebooks()
    out = tmp_path_factory.mktemp("run")
    proc = run_series(out)
    assert helpers.SAMPLE_DATA.read_bytes() == sample_before, "the input CSV was modified"
    assert committed_notebooks() == notebooks_before, "the main job modified notebooks/"
    return out, proc


def test_series_runs_end_to_end(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in NOTEBOOKS:
        assert (out / "notebooks" / f"{name}.ipynb").is_file(), name
    assert (out / "report.html").stat().st_size > 100_000  # figures are inlined
    for name in ["03_baseline", "04_mlp", "05_grid", "06_results"]:
        assert (out / "metrics" / f"{name}.json").is_file(), name
    headline = json.loads((out / "metrics" / "06_results.json").read_text())["headline"]
    assert {row["feature_set"] for row in headline} == {"audio", "pre-release", "full"}
    assert {p.name for p in (out / "models" / "final").iterdir()} == {"model.joblib", "model.json"}
    assert "SYNTHETIC" in proc.stdout


def test_every_notebook_shows_the_synthetic_banner(quick_run):
    out, _ = quick_run
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        text = json.dumps([c.get("outputs", []) for c in nb.cells])
        assert "SYNTHETIC SAMPLE" in text, f"{name} does not show the synthetic banner"
