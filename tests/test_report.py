"""The HTML report (scripts/series_report.py, build_report) on small executed-like notebooks:
a real title, the answer and the test-set table (models × feature sets) from the run's metrics
on top, the key figures and the conclusions, a table of contents whose links all land, code
folded, papermill's parameters cells gone, stream outputs merged, links between notebooks kept
inside the report, nothing loaded from the network, figures inline; and the same report opened
in headless Chromium where one is installed: a screenshot, every image loaded, every link
landing, a sans-serif face. (The same properties on a real quick run of the series:
tests/test_series_smoke.py.) No kernel runs here: the notebooks carry made-up outputs, so the
whole module takes a few seconds.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "reports" / "figures"
BANNER = "⚠ SYNTHETIC SAMPLE: made-up numbers. Download it: `kaggle datasets download x/y`"
HEADLINE = [
    {"model": "linear", "feature_set": "audio", "r2": 0.0123, "mae": 0.371, "median_factor": 2.09},
    {"model": "linear", "feature_set": "full", "r2": 0.7401, "mae": 0.18, "median_factor": 1.44},
    {"model": "hgb", "feature_set": "full", "r2": 0.8567, "mae": 0.142, "median_factor": 1.28,
     "r2_low": 0.7912, "r2_high": 0.9049},
    {"model": "ridge", "feature_set": "pre-release", "r2": 0.5432, "mae": 0.25,
     "median_factor": 1.61, "r2_low": 0.4011, "r2_high": 0.6522},
]
CV = [{"model": "hgb", "feature_set": "full", "r2_mean": 0.8251, "r2_std": 0.0493}]


@pytest.fixture(scope="module")
def series_report():
    spec = importlib.util.spec_from_file_location("series_report",
                                                  ROOT / "scripts" / "series_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def notebook(path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.cells = list(cells)
    nbformat.write(nb, path)
    return path


def md(source: str):
    return nbformat.v4.new_markdown_cell(source)


def code(source: str, *outputs, tags=()):
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
    cell.outputs, cell.execution_count = list(outputs), 1
    return cell


def stream(text: str, name: str = "stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def image(png: bytes):
    return nbformat.v4.new_output("display_data", data={
        "image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<Figure>"})


def parameter_cells(stem: str):
    """The notebook's own parameters cell and papermill's injected copy (absolute paths)."""
    return [code("DATA_PATH = None\nSEED = 42", tags=["parameters"]),
            code(f'# Parameters\nDATA_PATH = "/tmp/secret-{stem}/songs.csv"\nSEED = 7\n',
                 tags=["injected-parameters"])]


def executed_run(folder: Path, stems=("01_first", "02_second", "06_results")) -> list[Path]:
    """Executed-like notebooks (with outputs), the metrics and figures a run leaves."""
    png = (FIGURES / "cv_scores.png").read_bytes()
    notebooks = folder / "notebooks"
    notebooks.mkdir(parents=True)
    cells = {
        "01_first": [
            md("# 01 · First look\n\n**Goal.** Look at the data."),
            *parameter_cells("01"),
            code("for step in range(3): print(f'step {step}')",
                 stream("step 0\n"), stream("step 1\n"), stream("step 2\n"),
                 stream("careful\n", "stderr")),
            md("## 1. Setup\n\nSee [the details](02_second.ipynb#2.-Details,-in-depth) and "
               "[this notebook's discussion](#Discussion); [an absent one](09_absent.ipynb) "
               "and [the docs](https://example.org/docs).\n\n```python\n# not a heading\n"
               "link = '[x](02_second.ipynb)'\n```"),
            md("## Discussion\n\nFine.\n\n**Next:** [02 · Second](02_second.ipynb) goes on."),
        ],
        "02_second": [
            md("# 02 · Second: the figures"),
            *parameter_cells("02"),
            md("## 1. Intro"),
            code('fig = plot()\nsave_figure(fig, run, "cv_scores")', image(png)),
            code("table", nbformat.v4.new_output("execute_result", execution_count=1, data={
                "text/html": "<table><tr><td>42</td></tr></table>", "text/plain": "42"})),
            md("## 2. Details, in depth\n\nText.\n\n## Discussion\n\n"
               "**Next:** [06 · Results](./06_results.ipynb)."),
        ],
        "06_results": [
            md("# 06 · Results: how well?\n\nAfter [notebook 02](02_second.ipynb)."),
            *parameter_cells("06"),
            md("## 1. The test set"),
            code('save_figure(fig, run, "importance")\nsave_metrics(run)', stream("wrote it\n")),
            md("## Conclusion\n\n- **Audio predicts nothing** (section 1)."),
            md("**Limits.** A small test set; see [notebook 01](01_first.ipynb)."),
            code("print(len(songs))", stream("397\n")),
            md("This is the last notebook."),
        ],
    }
    paths = [notebook(notebooks / f"{stem}.ipynb", *cells[stem]) for stem in stems]
    (folder / "metrics").mkdir()
    (folder / "metrics" / "06_results.json").write_text(json.dumps({
        "notebook": "06_results", "data": "songs.csv", "seed": 42, "quick": True,
        "n_test": 80, "n_train": 317, "headline": HEADLINE, "cv": CV}), encoding="utf-8")
    (folder / "figures").mkdir()
    for name in ("cv_scores", "importance", "unrelated"):
        shutil.copy(FIGURES / "cv_scores.png", folder / "figures" / f"{name}.png")
    return paths


@pytest.fixture(scope="module")
def report_file(series_report, tmp_path_factory) -> Path:
    """report.html of a three-notebook run."""
    folder = tmp_path_factory.mktemp("run")
    executed = executed_run(folder)
    destination = folder / "report.html"
    series_report.build_report(executed, destination, metrics_dir=folder / "metrics",
                               figures_dir=folder / "figures", banner=BANNER,
                               data_name="songs.csv")
    return destination


@pytest.fixture(scope="module")
def report(report_file):
    """(HTML text, parsed document) of the report of a three-notebook run."""
    text = report_file.read_text(encoding="utf-8")
    return text, BeautifulSoup(text, "html.parser")


def top_of(soup):
    """Everything before the first notebook's section, as text."""
    first = soup.find("section", class_="report-notebook")
    return "".join(str(node) for node in first.find_all_previous(string=True)[::-1])


def test_title_and_answer_come_from_the_run(report, series_report):
    text, soup = report
    assert soup.title.string == f"{series_report.REPORT_TITLE} (songs.csv)"
    assert soup.find("h1").get_text() == series_report.REPORT_TITLE
    answer = soup.find("p", class_="report-answer").get_text()
    assert series_report.takeaway(HEADLINE) in answer  # the console's sentence, this run's numbers
    assert "0.857" in answer and "×1.28" not in answer and "1.28" in answer
    assert "80 test songs" in answer and "317 songs" in answer
    assert "quick (smoke) run" in soup.find("p", class_="report-meta").get_text()


def test_headline_table_is_models_by_feature_sets(report):
    """One row a model, one column a feature set (test R² [95 % interval] where the row has
    one; — where the model did not run), then the typical error on the full set."""
    _, soup = report
    table = soup.find("table", class_="report-table")
    assert "95 % interval" in table.caption.get_text()
    header = [th.get_text() for th in table.thead.find_all("th")]
    assert header == ["model", "audio", "full", "pre-release", "typical error (full set)"]
    rows = [[cell.get_text() for cell in tr.find_all(["th", "td"])]
            for tr in table.tbody.find_all("tr")]
    assert rows == [["linear", "0.012", "0.740", "—", "×1.44"],
                    ["hgb", "—", "0.857 [0.79, 0.90]", "—", "×1.28"],
                    ["ridge", "—", "—", "0.543 [0.40, 0.65]", "—"]]


def test_headline_table_without_a_full_set(series_report):
    """The last column falls back to the last feature set, and says so."""
    columns, rows = series_report.headline_table([
        {"model": "m", "feature_set": "a", "r2": 0.5, "median_factor": 2.0},
        {"model": "m", "feature_set": "b", "r2": 0.25, "median_factor": 1.5,
         "r2_low": 0.1, "r2_high": None}])
    assert columns == ["model", "a", "b", "typical error (b set)"]
    assert rows == [["m", "0.500", "0.250", "×1.50"]]


def test_the_top_holds_answer_table_figures_conclusions_then_contents(report):
    text, soup = report
    order = [text.index(f'id="{anchor}"') for anchor in
             ("answer", "results", "figures", "conclusions", "contents", "01_first")]
    assert order == sorted(order)
    figures = soup.find_all("figure", class_="report-figure")
    assert [f["id"] for f in figures] == ["figure-cv_scores", "figure-importance"]  # saved ones
    for figure in figures:
        assert figure.img["src"].startswith("data:image/png;base64,")
        assert figure.figcaption.a["href"].startswith("#")
    conclusions = soup.find("div", class_="report-conclusions").get_text()
    assert "Audio predicts nothing" in conclusions and "A small test set" in conclusions
    assert "last notebook" not in conclusions and "397" not in conclusions


def test_synthetic_banner_on_top(report):
    _, soup = report
    banner = soup.find(class_="report-banner")
    assert "SYNTHETIC SAMPLE" in banner.get_text()
    assert banner.code.get_text() == "kaggle datasets download x/y"
    assert "SYNTHETIC SAMPLE" in top_of(soup)


def test_contents_lists_titles_and_sections_and_every_link_lands(report):
    _, soup = report
    ids = [tag["id"] for tag in soup.find_all(id=True)]
    assert len(ids) == len(set(ids)), "duplicate ids"
    toc = soup.find("nav", class_="report-toc")
    titles = [li.a.get_text() for li in toc.ol.find_all("li", recursive=False)]
    assert titles == ["01 · First look", "02 · Second: the figures", "06 · Results: how well?"]
    sections = [a.get_text() for a in toc.select("ol ol a")]
    assert sections == ["1. Setup", "Discussion", "1. Intro", "2. Details, in depth",
                        "Discussion", "1. The test set", "Conclusion"]
    internal = [a["href"] for a in soup.find_all("a", href=True) if a["href"].startswith("#")]
    assert len(internal) > len(sections)
    assert [href for href in internal if href[1:] not in set(ids)] == []


def test_links_between_notebooks_stay_inside_the_report(report):
    _, soup = report
    hrefs = [a["href"] for a in soup.find_all("a", href=True)]
    assert not [h for h in hrefs if ".ipynb" in h]
    links = {a.get_text(): a["href"] for a in soup.find_all("a", href=True)}
    assert links["02 · Second"] == "#02_second"  # the "Next:" links
    assert links["06 · Results"] == "#06_results"
    assert links["the details"] == "#02_second--2-details-in-depth"  # notebook#heading
    assert links["this notebook's discussion"] == "#01_first--discussion"
    assert links["the docs"] == "https://example.org/docs"  # plain hyperlinks stay
    assert "an absent one" in soup.get_text() and "an absent one" not in links
    assert "link = '[x](02_second.ipynb)'" in soup.get_text()  # code blocks untouched


def test_code_is_folded_and_prompts_are_gone(report):
    text, soup = report
    inputs = soup.select(".jp-CodeCell .jp-InputArea")
    assert inputs
    for area in inputs:
        details = area.find_parent("details")
        assert details is not None and "report-code" in details["class"]
        assert not details.has_attr("open")
    assert soup.find(id="report-code-toggle") is not None  # "show all code"
    prompts = re.compile(r"\b(In|Out)\s*\[[\d\s]*\]:")  # nbconvert writes In&nbsp;[1]:
    assert not prompts.search(soup.find("main").get_text())


def test_parameters_cells_are_removed(report):
    text, _ = report
    assert "/tmp/secret" not in text and "injected" not in text
    assert "DATA_PATH" not in text


def test_stream_outputs_are_merged(report):
    text, soup = report
    outputs = [pre.get_text() for pre in soup.select(".jp-OutputArea-output pre")]
    assert "step 0\nstep 1\nstep 2\n" in outputs and "careful\n" in outputs
    stdout = '<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="text/plain"'
    assert not re.search(re.escape(stdout) + r"[^>]*>\s*<pre>[^<]*</pre>\s*</div>\s*</div>\s*"
                         r'<div class="jp-OutputArea-child">\s*' + re.escape(stdout), text)


def test_works_offline_with_figures_inline(report):
    text, soup = report
    remote = re.compile(r"^(https?:)?//")
    assert not [s["src"] for s in soup.find_all(["script", "img", "iframe"], src=True)
                if remote.match(s["src"])]
    assert not [s["href"] for s in soup.find_all("link", href=True) if remote.match(s["href"])]
    assert not re.search(r"""import\(\s*["']https?:""", text)
    assert not re.search(r"@import\s+(url\()?[\"']?https?:", text)
    images = soup.select(".jp-OutputArea-output img")
    assert images and all(img["src"].startswith("data:image/png;base64,") for img in images)


def test_a_partial_run_still_gets_a_report(series_report, tmp_path):
    """--only 01,02: no 06, so no test-set results or conclusions; links to 06 unlinked."""
    executed = executed_run(tmp_path, stems=("01_first", "02_second"))
    destination = tmp_path / "report.html"
    series_report.build_report(executed, destination, metrics_dir=tmp_path / "metrics",
                            figures_dir=tmp_path / "figures")
    soup = BeautifulSoup(destination.read_text(encoding="utf-8"), "html.parser")
    assert "06_results is not part of this run" in soup.find(class_="report-note").get_text()
    assert soup.find("table", class_="report-table") is None
    assert soup.find(id="conclusions") is None and soup.find(class_="report-banner") is None
    assert [f["id"] for f in soup.find_all("figure")] == ["figure-cv_scores"]
    ids = {tag["id"] for tag in soup.find_all(id=True)}
    assert all(a["href"][1:] in ids for a in soup.find_all("a", href=True)
               if a["href"].startswith("#"))
    assert "06 · Results" in soup.get_text() and "06_results.ipynb" not in str(soup)
    assert not list(tmp_path.glob(".*partial"))  # written via a temp file, none left


def test_missing_metrics_are_said_not_fatal(series_report, tmp_path):
    executed = executed_run(tmp_path)
    (tmp_path / "metrics" / "06_results.json").write_text("{not json", encoding="utf-8")
    destination = tmp_path / "report.html"
    series_report.build_report(executed, destination, metrics_dir=tmp_path / "metrics")
    soup = BeautifulSoup(destination.read_text(encoding="utf-8"), "html.parser")
    assert "cannot read 06_results.json" in soup.find(class_="report-note").get_text()
    assert soup.find("figure") is None  # no figures folder given
    assert soup.find(id="conclusions") is not None  # the notebook's prose still is there


# --- the report in a real browser ------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOT = ROOT / "build" / "test-report" / "report.png"
WINDOW = (1280, 1600)
# Appended to a copy of the report: once everything has loaded, write what the browser saw
# into the page, where --dump-dom shows it.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var links = Array.from(document.querySelectorAll('a[href^="#"]'), function (a) {
    return a.getAttribute("href"); });
  var answer = document.querySelector(".report-answer") || document.body;
  var out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                  .map(function (i) { return i.alt || i.src.slice(0, 80); }),
    unlanded: links.filter(function (h) {
      return !document.getElementById(decodeURIComponent(h.slice(1))); }),
    font: getComputedStyle(answer).fontFamily});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def browser():
    """The path of a Chromium-family browser, or a visible skip saying how to get one."""
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip(f"no {', '.join(BROWSERS)} on PATH, so the report is not checked in a "
                    "browser; install one (Debian: apt-get install chromium; .ci/run does)")
    return found


def headless(browser: str, tmp_path: Path, *arguments: str) -> str:
    """Run the browser headless (flags that keep it off the network) and return its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    flags = ["--headless", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    done = subprocess.run([browser, *flags, *arguments], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_in_browser(browser: str, page: Path, tmp_path: Path) -> dict:
    """What the browser saw of `page`: how many images, the ones that did not load, the
    in-page links that land on no element, the answer's font; plus links to files that do
    not exist (relative to the page)."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    dom = headless(browser, tmp_path, "--virtual-time-budget=10000", "--dump-dom",
                   probed.as_uri())
    probe = BeautifulSoup(dom, "html.parser").find(id="browser-probe")
    assert probe is not None, f"the page did not finish loading: {dom[-500:]}"
    seen = json.loads(probe.get_text())
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    hrefs = [a["href"] for a in soup.find_all("a", href=True)]
    files = [urlparse(h).path for h in hrefs if not urlparse(h).scheme and h[:1] != "#"]
    seen["missing_files"] = [f for f in files if not (page.parent / unquote(f)).exists()]
    # A browser shows a PNG cut short as far as it goes (naturalWidth > 0): decode each whole.
    seen["truncated"] = [img.get("alt") for img in soup.find_all("img", src=True)
                         if img["src"].startswith("data:image/png;base64,")
                         and not png_decodes(img["src"].split(",", 1)[1])]
    return seen


def png_decodes(data: str) -> bool:
    """Whether base64 PNG data decodes to the end."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as png:
            png.load()
    except (OSError, ValueError):
        return False
    return True


def test_the_report_in_a_browser(browser, report_file, tmp_path):
    """Every image loads, every in-report link lands, links to files exist, the text is in a
    sans-serif face; the screenshot (build/test-report/report.png) is the window's size and
    not blank."""
    from PIL import Image, ImageStat

    seen = check_in_browser(browser, report_file, tmp_path)
    assert seen["images"] >= 3, seen  # two key figures and the notebook's own output
    assert seen["broken"] == seen["truncated"] == seen["unlanded"] == seen["missing_files"] == [], \
        seen
    assert "sans-serif" in seen["font"] and "serif" not in seen["font"].split(",")[0], seen
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    headless(browser, tmp_path, f"--screenshot={SCREENSHOT}",
             "--window-size={},{}".format(*WINDOW), report_file.as_uri())
    with Image.open(SCREENSHOT) as shot:
        assert shot.size == WINDOW
        gray = shot.convert("L")
        dark = sum(gray.histogram()[:128]) / (WINDOW[0] * WINDOW[1])
        assert ImageStat.Stat(gray).stddev[0] > 20 and 0.005 < dark < 0.5, "a blank page"


def test_the_browser_check_sees_a_broken_image_and_links_that_land_nowhere(browser, report_file,
                                                                           tmp_path):
    """The check above can fail: planted in a copy of the report, an image that does not
    decode, one cut short, a link to a missing anchor and a link to a missing file are each
    reported."""
    text = report_file.read_text(encoding="utf-8")
    planted_images = iter(["iVBORw0KGgoAAAA", None])  # the PNG signature alone; cut short

    def plant(match):
        data = next(planted_images, match.group(1))
        return f'src="data:image/png;base64,{data or match.group(1)[:2000]}"'

    broken = re.sub(r'src="data:image/png;base64,([^"]*)"', plant, text).replace(
        "</main>", '<a href="#no-such-section">x</a><a href="no-such-file.html">y</a></main>')
    planted = tmp_path / "planted.html"
    planted.write_text(broken, encoding="utf-8")
    seen = check_in_browser(browser, planted, tmp_path)
    assert len(seen["broken"]) == 1 and len(seen["truncated"]) == 2, seen
    assert seen["unlanded"] == ["#no-such-section"], seen
    assert seen["missing_files"] == ["no-such-file.html"], seen
