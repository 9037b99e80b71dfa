"""The whole series on the synthetic sample (quick mode): it works end to end and shows the
synthetic banner everywhere. (That two runs agree is tested where it is cheaper: identical
Keras fits in two processes in test_mlp.py, the committed notebooks re-executed by nbval.)"""

import json
import re
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
    assert {p.name for p in (out / "models" / "final").iterdir()} == {"model.skops", "model.json"}
    assert "SYNTHETIC" in proc.stdout


def test_every_notebook_shows_the_synthetic_banner(quick_run):
    out, _ = quick_run
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        text = json.dumps([c.get("outputs", []) for c in nb.cells])
        assert "SYNTHETIC SAMPLE" in text, f"{name} does not show the synthetic banner"


def test_the_report_reads_like_a_report(quick_run):
    """report.html: a real title; on top this run's answer and test-set table, the synthetic
    banner, the saved figures and the conclusions; each notebook a section listed in the
    contents; every internal link lands; code folded, no prompts, no papermill parameters
    (absolute paths); nothing loaded from the network."""
    from bs4 import BeautifulSoup

    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (out / "report.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    results = json.loads((out / "metrics" / "06_results.json").read_text())
    assert soup.title.string.startswith("Predicting Spotify streams")
    assert helpers.SAMPLE_DATA.name in soup.title.string

    first_notebook = text.index('<section class="report-notebook"')
    top = BeautifulSoup(text[:first_notebook], "html.parser")
    answer = top.find("p", class_="report-answer").get_text()
    best = max(results["headline"], key=lambda row: row["r2"])
    assert f"test R² {best['r2']:.3f}" in answer and f"{results['n_test']} test songs" in answer
    table = top.find("table", class_="report-table").get_text()
    assert all(f"{row['r2']:.3f}" in table for row in results["headline"])
    assert "SYNTHETIC SAMPLE" in top.find(class_="report-banner").get_text()
    figures = top.select("figure.report-figure img")
    assert len(figures) == len(list((out / "figures").glob("*.png"))) >= 2
    assert all(img["src"].startswith("data:image/png;base64,") for img in figures)
    assert top.find(id="conclusions") is not None

    sections = soup.find_all("section", class_="report-notebook")
    assert [section["id"] for section in sections] == NOTEBOOKS
    assert all(section.find("h1") is not None for section in sections)
    toc = soup.find("nav", class_="report-toc")
    assert [li.a["href"] for li in toc.ol.find_all("li", recursive=False)] == [
        f"#{name}" for name in NOTEBOOKS]
    assert len(toc.select("ol ol a")) >= 3 * len(NOTEBOOKS)  # their sections
    ids = [tag["id"] for tag in soup.find_all(id=True)]
    assert len(ids) == len(set(ids)), "duplicate ids"
    hrefs = [a["href"] for a in soup.find_all("a", href=True)]
    assert [h for h in hrefs if h.startswith("#") and h[1:] not in set(ids)] == []
    assert [h for h in hrefs if ".ipynb" in h] == []  # the "Next:" links point inside

    for area in soup.select(".jp-CodeCell .jp-InputArea"):
        details = area.find_parent("details")
        assert details is not None and not details.has_attr("open"), "code not folded"
    assert not re.search(r"\b(In|Out)\s*\[[\d\s]*\]:", soup.find("main").get_text())
    assert str(out) not in text and str(helpers.SAMPLE_DATA) not in text  # injected paths

    remote = re.compile(r"^(https?:)?//")
    assert not [tag.get("src") or tag.get("href") for tag in soup.find_all(["script", "link"])
                if remote.match(tag.get("src") or tag.get("href") or "")]
    assert not re.search(r"""import\(\s*["']https?:""", text)


# The long cells' bars (tqdm, helpers.FitProgress for the grid) and their counts in a quick
# run: 4 baselines × 3 feature sets, 3 feature sets, 2 seeds, 3 feature sets, 2 grid
# configurations × 3 folds, 2 tree searches × 3 feature sets; 2 tuned trees × 3 feature sets +
# the tuned MLP, 6 models × 3 feature sets + 2 on the full set only, 2 other test splits,
# 6 importance panels.
QUICK_BARS = {"03_baseline": {"cross-validating the baselines": 12},
              "04_mlp": {"cross-validating the MLP": 3, "the same network, other seeds": 2,
                         "early stopping": 3},
              "05_grid": {"grid search": 6, "tuning the tree ensembles": 6},
              "06_results": {"cross-validating": 7,
                             "fitting on the training set": 20, "other test splits": 2,
                             "permutation importance": 6}}
BAR_LINE = re.compile(r"^(.+): +(\d+)%\|[^|]*\| (\d+)/(\d+) .*$", re.M)


def test_each_long_cell_keeps_one_final_bar_line(quick_run):
    """In the executed notebooks each bar is one line, complete (n = total; the grid's counts
    every fit), with no \\r updates left; the console (not a terminal here) shows the same
    final lines, once each."""
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, expected in QUICK_BARS.items():
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        streams = [o.text for c in nb.cells for o in c.get("outputs", [])
                   if o.output_type == "stream"]
        assert not any("\r" in text for text in streams), name
        bars = [m.groups() for text in streams for m in BAR_LINE.finditer(text)]
        assert {desc: int(n) for desc, _, n, _ in bars} == expected, name
        assert all(n == total for _, _, n, total in bars) and len(bars) == len(expected), name
        for desc, total in expected.items():
            assert len(re.findall(rf"^  {re.escape(desc)}: 100%.* {total}/{total} ", proc.stdout,
                                  re.M)) == 1, desc


def small_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / f"first-{rows}-rows.csv"
    helpers.load_raw(helpers.SAMPLE_DATA).head(rows).to_csv(path, index=False)
    return path


def test_a_file_of_a_few_dozen_songs_runs_through_every_notebook(tmp_path):
    """60 rows (57 songs by a dozen artists): every notebook runs in quick mode; splits that
    such a file cannot fill are left out with a line saying so."""
    out = tmp_path / "run"
    command = [sys.executable, "scripts/run_series.py", "--data", str(small_file(tmp_path, 60)),
               "--output", str(out), "--quick"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all((out / "notebooks" / f"{name}.ipynb").is_file() for name in NOTEBOOKS)
    assert (out / "models" / "pre-release" / "model.json").is_file()


def test_a_file_too_small_for_the_protocol_stops_before_the_first_notebook(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "scripts/run_series.py", "--data", str(small_file(tmp_path, 40)),
               "--output", str(out), "--quick"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Only 37 usable songs after cleaning; the series needs at least 50" in proc.stderr
    assert list((out / "notebooks").glob("*.ipynb")) == []
