"""Every check of the one quick run (conftest.quick_run): notebooks, console, report.html."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from bs4 import BeautifulSoup
from PIL import Image, ImageStat

from spotify_streams import contract
from spotify_streams.commands import run_series, series_report
from spotify_streams.config import ROOT, SAMPLE_DATA

NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# Bars of a quick run: 4 baselines × 3 feature sets; 3 sets, 2 seeds, 3 sets; 2 configurations
# × 3 folds, 2 tree searches × 3 sets; 2 tuned trees × 3 sets + the MLP, 6 models × 3 sets + 2
# on the full set, 2 other splits, 6 importance panels.
QUICK_BARS = {"03_baseline": {"cross-validating the baselines": 12},
              "04_mlp": {"cross-validating the MLP": 3, "the same network, other seeds": 2,
                         "early stopping": 3},
              "05_grid": {"grid search": 6, "tuning the tree ensembles": 6},
              "06_results": {"cross-validating": 9, "fitting on the training set": 22,
                             "seeds": 3, "other test splits": 2, "permutation importance": 6,
                             "random splits of songs": 2}}
BAR_LINE = re.compile(r"^(.+): +\d+%\|[^|]*\| (\d+)/(\d+) .*$", re.M)


def test_the_series_runs_end_to_end_synthetic_everywhere_each_bar_one_final_line(quick_run):
    """Each bar one final line in its notebook (no \\r states) and once on the console."""
    out, proc = quick_run
    for name in NOTEBOOKS:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells for o in c.get("outputs", [])]
        assert "SYNTHETIC SAMPLE" in json.dumps(outputs), name
        assert not [o for o in outputs if o.output_type == "stream" and "\r" in o.text], name
        bars = [m.groups() for o in outputs if o.output_type == "stream"
                for m in BAR_LINE.finditer(o.text)]
        assert sorted(bars) == sorted((desc, str(n), str(n))
                                      for desc, n in QUICK_BARS.get(name, {}).items()), name
    console = re.findall(r"^  (.+): 100%\|[^|]*\| (\d+)/\2 ", proc.stdout, re.M)
    assert sorted(console) == sorted((desc, str(n)) for bars in QUICK_BARS.values()
                                     for desc, n in bars.items())
    assert sorted(p.name for p in (out / "metrics").iterdir()) == [
        "03_baseline.json", "04_mlp.json", "05_grid.json", "06_results.json"]
    for model in ("final", "pre-release"):
        assert {p.name for p in (out / "models" / model).iterdir()} == {
            "model.skops", "conformal.skops", "model.json"}


def test_another_seed_fails_the_cells_and_the_metrics_of_notebook_03(quick_run, tmp_path):
    """03 as the quick run ran it, but with SEED=43: the contract fails a cell and a metric."""
    out, the_contract = quick_run[0], contract.load_contract()
    shutil.copytree(out / "processed", tmp_path / "processed")  # 02's cleaned data
    assert run_series.main(["--data", str(SAMPLE_DATA), "--output", str(tmp_path), "--quick",
                            "--seed", "43", "--only", "3"]) == 0
    seed_42, seed_43 = (nbformat.read(d / "notebooks" / "03_baseline.ipynb", as_version=4)
                        for d in (out, tmp_path))
    sanitize = contract.sanitizer_from_file(ROOT / "tests" / "nbval_sanitize.cfg")
    messages = contract.compare_notebooks(seed_42, seed_43, the_contract, sanitize, "03")
    assert any(re.match(r"03 Cell \d+: .*: line \d+: committed \S+, fresh \S+: difference \S+ > "
                        r"tolerance", m) for m in messages), messages
    name = "03_baseline.json"
    messages = contract.compare_metrics(name, *(json.loads((d / "metrics" / name).read_text(
        encoding="utf-8")) for d in (out, tmp_path)), the_contract)
    assert f"{name}: seed: committed 42, fresh 43: compared exactly (type int)" in messages
    assert any(re.match(rf"{name}: cv\[.*\]\.r2_mean: committed \S+, fresh \S+: difference "
                        r"\S+ > tolerance 0\.02", m) for m in messages), messages


def test_headline_table_is_models_by_feature_sets():
    """Models by feature sets (R² [interval], — if not run), then the full (or last) set's error."""
    def table(*rows):  # (model, feature_set, r2, median_factor[, r2_low, r2_high])
        keys = ("model", "feature_set", "r2", "median_factor", "r2_low", "r2_high")
        return series_report.headline_table([dict(zip(keys, row)) for row in rows])

    columns, rows = table(("linear", "audio", 0.0123, 2.09), ("linear", "full", 0.7401, 1.44),
                          ("hgb", "full", 0.8567, 1.28, 0.7912, 0.9049),
                          ("ridge", "pre-release", 0.5432, 1.61, 0.4011, 0.6522))
    assert columns == ["model", "audio", "full", "pre-release", "typical error (full set)"]
    assert rows == [["linear", "0.012", "0.740", "—", "×1.44"],
                    ["hgb", "—", "0.857 [0.79, 0.90]", "—", "×1.28"],
                    ["ridge", "—", "—", "0.543 [0.40, 0.65]", "—"]]
    assert table(("m", "a", 0.5, 2.0), ("m", "b", 0.25, 1.5, 0.1, None)) == (
        ["model", "a", "b", "typical error (b set)"], [["m", "0.500", "0.250", "×1.50"]])


def test_the_report_page_its_top_then_each_notebook_folded_and_nothing_remote(quick_run):
    """Answer, table, banner, figures, conclusions, contents, then the notebooks' sections;
    links land (# links also in test_the_report_in_a_browser); nothing from the network."""
    out, _ = quick_run
    text = (out / "report.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    results = json.loads((out / "metrics" / "06_results.json").read_text())
    top = BeautifulSoup(text[:text.index('<section class="report-notebook"')], "html.parser")
    assert soup.title.string == f"{series_report.REPORT_TITLE} ({SAMPLE_DATA.name})"
    answer = top.find("p", class_="report-answer").get_text()
    assert series_report.takeaway(results) in answer and f"{results['n_test']} test songs" in answer
    assert "quick (smoke) run" in top.find("p", class_="report-meta").get_text()
    assert {row["feature_set"] for row in results["headline"]} == {"audio", "pre-release", "full"}
    table = top.find("table", class_="report-table").get_text()
    assert all(f"{row['r2']:.3f}" in table for row in results["headline"])
    banner = top.find(class_="report-banner")
    assert "SYNTHETIC SAMPLE" in banner.get_text() and "kaggle" in banner.code.get_text()
    order = [text.index(f'id="{anchor}"') for anchor in
             ("answer", "results", "figures", "conclusions", "contents", NOTEBOOKS[0])]
    assert order == sorted(order)
    figures = top.select("figure.report-figure")
    assert 2 <= len(figures) <= len(list((out / "figures").glob("*.png")))  # the saved ones
    assert all(f.img["src"].startswith("data:image/png;base64,") for f in figures)
    assert all(f.figcaption.a["href"].startswith("#") for f in figures)

    sections = soup.find_all("section", class_="report-notebook")
    assert [s["id"] for s in sections] == NOTEBOOKS and all(s.find("h1") for s in sections)
    toc = soup.find("nav", class_="report-toc")
    assert [a["href"] for a in toc.select(":scope > ol > li > a")] == [f"#{n}" for n in NOTEBOOKS]
    assert len(toc.select("ol ol a")) >= 3 * len(NOTEBOOKS)  # their sections
    ids = [tag["id"] for tag in soup.find_all(id=True)]
    assert len(ids) == len(set(ids)), "duplicate ids"
    hrefs = [a["href"] for a in soup.find_all("a", href=True)]
    assert [h for h in hrefs if h[0] == "#" and h[1:] not in ids] == []  # also without a browser
    assert [h for h in hrefs if ".ipynb" in h] == [] and any("--" in h for h in hrefs)
    files = [unquote(urlparse(h).path) for h in hrefs if not urlparse(h).scheme and h[0] != "#"]
    assert files and all((out / file).exists() for file in files), files  # the model card
    areas = soup.select(".jp-CodeCell .jp-InputArea")
    folded = soup.select(".jp-CodeCell details:not([open]) .jp-InputArea")
    assert areas and areas == folded and soup.find(id="report-code-toggle"), "code not folded"
    assert not re.search(r"\b(In|Out)\s*\[[\d\s]*\]:", soup.find("main").get_text())
    assert str(out) not in text and str(SAMPLE_DATA) not in text and "injected" not in text
    assert not [t for t in soup.find_all(["script", "link", "img", "iframe"])
                if re.match(r"(https?:)?//", t.get("src") or t.get("href") or "")]
    assert not re.search(r"""import\(\s*["']https?:|@import\s+(url\()?["']?https?:""", text)


def test_a_partial_run_or_unreadable_metrics_still_get_a_report(quick_run, tmp_path):
    """Without 06: no results, conclusions or links to it; unreadable metrics are said."""
    out, _ = quick_run
    executed = [out / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]
    series_report.build_report(executed[:2], page := tmp_path / "partial.html",
                               metrics_dir=out / "metrics", figures_dir=out / "figures")
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    assert "06_results is not part of this run" in soup.find(class_="report-note").get_text()
    assert soup.find("table", class_="report-table") is None and soup.find(id="conclusions") is None
    assert soup.find(class_="report-banner") is None and "06_results.ipynb" not in str(soup)
    assert all(soup.find(id=a["href"][1:]) for a in soup.select('a[href^="#"]'))
    assert not list(tmp_path.glob(".*partial*"))  # written via a temp file, none left
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "06_results.json").write_text("{not json", encoding="utf-8")
    series_report.build_report(executed, page, metrics_dir=tmp_path / "metrics")
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    assert "cannot read 06_results.json" in soup.find(class_="report-note").get_text()
    assert soup.find("figure") is None  # no figures folder given
    assert soup.find(id="conclusions") is not None  # 06's prose still is there


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOT = ROOT / "build" / "test-report" / "report.png"
# Once loaded, the page writes what the browser saw into itself, where --dump-dom shows it.
PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre"), images = Array.from(document.images);
  out.id = "probe";
  out.textContent = JSON.stringify({images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).length,
    unlanded: Array.from(document.querySelectorAll('a[href^="#"]'), a => a.getAttribute("href"))
      .filter(h => !document.getElementById(decodeURIComponent(h.slice(1)))),
    font: getComputedStyle(document.querySelector(".report-answer")).fontFamily});
  document.body.appendChild(out);
});</script>"""


def headless(tmp_path, *arguments: str) -> str:
    """A Chromium-family browser's stdout, headless and off the network (a skip without one)."""
    if (browser := next(filter(None, map(shutil.which, BROWSERS)), None)) is None:
        pytest.skip(f"no {', '.join(BROWSERS)} on PATH (Debian: apt-get install chromium)")
    flags = ["--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'browser'}"]
    flags += ["--no-sandbox"] * (os.geteuid() == 0)  # Chromium refuses root with its sandbox
    ran = subprocess.run([browser, *flags, *arguments], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return ran.stdout


def test_the_report_in_a_browser(quick_run, tmp_path):
    """Images whole, # links land (planted faults show exactly), sans-serif, not blank."""
    page = quick_run[0] / "report.html"
    text = page.read_text(encoding="utf-8")
    for data in re.findall(r'src="data:image/png;base64,([^"]*)"', text):
        Image.open(io.BytesIO(base64.b64decode(data))).load()  # not cut short
    text = re.sub(r'(src="data:image/png;base64,)[^"]*', r"\1iVBORw0KGgoAAAA", text, count=1)
    text = text.replace("</main>", '<a href="#no-such-section">x</a></main>')
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = headless(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert (probe := BeautifulSoup(dom, "html.parser").find(id="probe")) is not None, dom[-500:]
    seen = json.loads(probe.get_text())
    assert seen["images"] >= 3 and seen["broken"] == 1, seen
    assert seen["unlanded"] == ["#no-such-section"], seen
    assert "sans-serif" in seen["font"] and "serif" not in seen["font"].split(",")[0], seen
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    headless(tmp_path, f"--screenshot={SCREENSHOT}", "--window-size=1280,1600", page.as_uri())
    gray = Image.open(SCREENSHOT).convert("L")  # convert() reads it all and closes the file
    dark = sum(gray.histogram()[:128]) / (1280 * 1600)  # the share of dark pixels
    assert gray.size == (1280, 1600) and ImageStat.Stat(gray).stddev[0] > 20, "a blank page"
    assert 0.005 < dark < 0.5, f"a blank page? {dark:.1%} of it is dark"
