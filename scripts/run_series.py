#!/usr/bin/env python3
"""Run the whole notebook series (notebooks/NN_*.ipynb) and build one HTML report.

    python scripts/run_series.py [--data file.csv] [--output build/run] [--quick] [--seed 42]
                                 [--only 01,03] [--refresh]

Executed copies go to <output>/notebooks/, the report to <output>/report.html; the
notebooks in notebooks/ are never modified, except with --refresh (maintainer mode: they
are re-executed in place, unparameterized, on the real data file).
<output>/RUN_STATUS.json says whether the run is complete: until the last notebook and the
report are written it says "incomplete" (or "failed"/"interrupted"), and which notebooks'
outputs in <output> come from this run.
Exit codes: 0 success, 1 a notebook failed, 2 bad data or bad usage (nothing was run),
130 interrupted (Ctrl-C or SIGTERM; the partial notebook is kept as NN.failed.ipynb).
"""

from __future__ import annotations

import argparse
import base64
import html
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent


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


def import_helpers():
    """Import the project's helpers module, or explain how to install it."""
    try:
        import helpers
    except ImportError as exc:
        raise UsageError(f"cannot import helpers ({exc}); install the project first: "
                         "make venv (or pip install -r requirements.txt -e .)") from exc
    return helpers


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


def prepare_run(helpers, args: argparse.Namespace):
    """Resolve data and output paths and check the data up front (raises UsageError)."""
    if args.refresh and args.data:
        raise UsageError("--refresh always uses data/spotify-2023.csv; drop --data")
    try:  # the notebooks check them too (papermill -p): one rule, in helpers
        helpers.check_parameters(SEED=args.seed, QUICK=args.quick,
                                 **({"N_JOBS": args.jobs} if args.jobs is not None else {}))
    except helpers.DataError as exc:
        raise UsageError(f"{exc}") from exc
    data = Path(args.data).resolve() if args.data else None
    if data is not None and data.is_dir():
        raise UsageError(f"--data {data} is a folder, not a CSV file; pass the CSV file itself")
    if data is not None and not data.is_file():
        raise UsageError(f"data file not found: {data}; pass an existing CSV with --data")
    output = None if args.refresh else Path(args.output).resolve()
    run = helpers.resolve_run(data_path=data, output_dir=output)
    if args.refresh:
        real = Path(helpers.RAW_DATA)
        actual = helpers.file_sha256(real) if real.is_file() else "absent"
        if actual != helpers.REAL_SHA256:
            raise UsageError(f"--refresh needs the real data file {real} with sha256 "
                             f"{helpers.REAL_SHA256} (found: {actual}). {helpers.DOWNLOAD_HINT}")
    try:
        helpers.check_data(run.data_path)  # reads only; the CSV is never written
    except helpers.DataError as exc:
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
    """papermill's stderr_file: shows the in-cell progress bars (helpers.progress, tqdm on the
    kernel's stderr, each state after a \\r) in this console. On a terminal the bar updates
    live on a line below papermill's bar of the notebook; otherwise (a log) only each bar's
    final line is printed. Other kernel stderr stays in the executed notebook only."""

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
    With refresh, papermill's run metadata (timestamps, durations) is dropped before the
    replace, so re-executing a committed notebook only changes its outputs."""
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


SUMMARY_COLUMNS = [("model", "model", 24, "<", ""), ("feature_set", "feature set", 12, "<", ""),
                   ("r2", "test R²", 8, ">", ".3f"), ("mae", "MAE (log10)", 12, ">", ".3f"),
                   ("median_factor", "typical error", 14, ">", ".2f")]


TEST_SET_NOTE = ("Test set (songs held out from every fit and every choice), predicting "
                 "log10(streams).")
TYPICAL_ERROR_NOTE = ("'typical error' ×f: half of the songs are predicted within a factor f "
                      "of their real stream count.")


def metric_text(row: dict, key: str, number: str) -> str:
    """One cell of the headline table as text (the console summary's and the report's)."""
    value = row.get(key, "")
    text = format(value, number) if isinstance(value, int | float) else str(value)
    return f"×{text}" if key == "median_factor" and text else text


def takeaway(headline: list) -> str:
    """One sentence from the headline rows: the best model overall and per feature set."""
    best = max(headline, key=lambda row: row.get("r2", float("-inf")))
    text = (f"Best: {best['model']} on the {best['feature_set']} features, test R² "
            f"{best['r2']:.3f}; half of its songs are within a factor of "
            f"{best['median_factor']:.2f} of their real stream count.")
    others = {}
    for row in headline:
        if row["feature_set"] != best["feature_set"]:
            others[row["feature_set"]] = max(others.get(row["feature_set"], -1e9), row["r2"])
    if others:
        text += " On the other feature sets the best test R² is " + " and ".join(
            f"{r2:.3f} ({fs})" for fs, r2 in others.items()) + "."
    return text


def print_summary(run, report: Path, out_notebooks: Path, banner: str) -> None:
    """One screen: where things are and the headline (test-set) metrics of 06_results."""
    metrics_dir = Path(run.metrics_dir)
    print(f"\nreport:    {Path(report).resolve().as_uri()}\nnotebooks: {out_notebooks}\n"
          f"metrics:   {metrics_dir}")
    results = metrics_dir / "06_results.json"
    headline = json.loads(results.read_text()).get("headline") if results.is_file() else None
    if not headline:
        print("no headline metrics (06 not run)")
    else:
        print(f"\n{TEST_SET_NOTE}\n{TYPICAL_ERROR_NOTE}\n")
        print(" ".join(f"{title:{align}{width}}" for _, title, width, align, _ in SUMMARY_COLUMNS))
        for row in headline:
            print(" ".join(f"{metric_text(row, key, number):{align}{width}}"
                           for key, _, width, align, number in SUMMARY_COLUMNS))
        print("\n" + takeaway(headline))
    if banner:
        print("\n" + boxed(banner))


# ----------------------------------------------------------------------------------------
# The HTML report: the answer, the test-set table, the key figures and the conclusions on
# top, then each notebook as a section (code folded, papermill's plumbing removed); one file
# that works offline.

REPORT_TITLE = "Predicting Spotify streams — results report"
RESULTS_NOTEBOOK = "06_results"  # writes metrics/06_results.json; its last section concludes
# The notebooks' own parameters cell and papermill's injected copy of it (with absolute local
# paths): plumbing, left out of the report.
PLUMBING_TAGS = ["parameters", "injected-parameters"]
REPORT_TEMPLATE = "spotify_report.html.j2"
# nbconvert's `lab` template minus what it loads from a CDN (require.js, MathJax, mermaid,
# widgets; the series uses none of them), with each code input folded into a closed
# <details> element: "code" opens one cell, the button at the top opens them all.
REPORT_TEMPLATE_SOURCE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block extra_css %}
<style type="text/css">
main { max-width: 1100px; margin: 0 auto; padding: 0 1.5em 4em; }
.report-meta { color: #555; }
.report-nav a { margin-right: 1em; }
.report-banner { border: 3px solid #c62828; background: #fff3f3; color: #8e0000;
                 padding: 0.2em 1em; margin: 1em 0; font-weight: bold; }
.report-note { border-left: 4px solid #999; padding: 0.2em 0.8em; color: #444; }
.report-answer { font-size: 1.15em; line-height: 1.5; }
table.report-table { border-collapse: collapse; margin: 0.5em 0; }
table.report-table th, table.report-table td { padding: 0.2em 0.8em; text-align: left;
                                               border-bottom: 1px solid #ddd; }
table.report-table .number { text-align: right; font-variant-numeric: tabular-nums; }
figure.report-figure { margin: 1em 0 2em; }
figure.report-figure img { max-width: 100%; height: auto; }
.report-conclusions { border-left: 4px solid #1e88e5; padding-left: 0.5em; }
section.report-notebook { border-top: 3px solid #ccc; margin-top: 3em; }
details.report-code > summary { cursor: pointer; color: #777; font-size: 0.85em; }
[id] { scroll-margin-top: 0.5em; }
@media print { details.report-code, #report-code-toggle { display: none; } }
</style>
{% endblock extra_css %}
{% block rawcell scoped -%}
{%- if cell.metadata.get("report_html") -%}
{{ cell.source }}
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock rawcell %}
{% block input_group -%}
{%- if cell.source.strip() -%}
<details class="report-code"><summary>code</summary>
{{ super() }}
</details>
{%- endif -%}
{%- endblock input_group %}
{% block footer_js %}
<script>
(function () {
  var button = document.getElementById("report-code-toggle");
  if (!button) { return; }
  button.hidden = false;
  button.addEventListener("click", function () {
    var open = button.getAttribute("aria-pressed") !== "true";
    document.querySelectorAll("details.report-code").forEach(function (d) { d.open = open; });
    button.setAttribute("aria-pressed", open ? "true" : "false");
    button.textContent = open ? "Hide all code" : "Show all code";
  });
})();
</script>
{% endblock footer_js %}
"""
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
MARKDOWN_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_HREF = re.compile(r"(href=[\"'])([^\"']+)([\"'])")
NOTEBOOK_LINK = re.compile(r"^(?![a-z][\w+.-]*:)(?:[^#?]*/)?([^/#?]+)\.ipynb(?:#(.*))?$", re.I)
SAVED_FIGURE = re.compile(r"save_figure\([^)]*?[\"']([\w.-]+)[\"']\s*\)")


def markdown_chunks(source: str) -> list[tuple[bool, list[str]]]:
    """A markdown text as runs of lines, (True, lines) inside fenced code blocks."""
    chunks, fence = [], None
    for line in source.split("\n"):
        match = FENCE.match(line)
        in_code = fence is not None or match is not None
        if match and fence is None:
            fence = match.group(1)
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        if chunks and chunks[-1][0] == in_code:
            chunks[-1][1].append(line)
        else:
            chunks.append((in_code, [line]))
    return chunks


def heading_text(markdown: str) -> tuple[str, str]:
    """A heading's plain text, and the id nbconvert (and Jupyter) give it: the fragment of a
    `notebook.ipynb#id` link."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    rendered = markdown2html_mistune(f"# {markdown}")
    match = re.search(r'<h1 id="([^"]*)">(.*?)(<a class="anchor-link"[^>]*>.*?</a>)?</h1>',
                      rendered, re.S)
    if not match:
        return markdown.strip(), ""
    text = html.unescape(re.sub(r"<[^>]+>", "", match.group(2))).strip()
    return text or markdown.strip(), html.unescape(match.group(1))


def slug(text: str) -> str:
    """An anchor-friendly form of a heading: lower case, runs of other characters as '-'."""
    return re.sub(r"\W+", "-", text.lower()).strip("-_") or "section"


class Chapter:
    """One executed notebook as a section of the report: its cells (every heading given an
    anchor that is unique in the report), its title, headings, saved figures, conclusion."""

    def __init__(self, path: Path, taken: set):
        import nbformat

        self.stem = path.stem
        self.nb = nbformat.read(path, as_version=4)
        self.title = self.stem
        self.headings = []  # (level, plain text, anchor) in reading order
        self.anchors = {}  # nbconvert's id of a heading (unquoted) -> its anchor here
        self.figures = {}  # name of a saved figure -> (anchor, text) of its section
        self.conclusion = None  # (anchor, text, markdown) of the last H2 section
        taken.add(self.stem)
        section, last_h2 = (self.stem, ""), None
        originals = [cell.source for cell in self.nb.cells]
        for index, cell in enumerate(self.nb.cells):
            cell["id"] = f"{self.stem[:50]}-{index}"  # unique across notebooks
            if cell.cell_type == "code":
                for name in SAVED_FIGURE.findall(cell.source):
                    self.figures.setdefault(name, section)
            if cell.cell_type != "markdown":
                continue
            lines = []
            for in_code, chunk in markdown_chunks(cell.source):
                for line in chunk:
                    match = None if in_code else HEADING.match(line)
                    if not match:
                        lines.append(line)
                        continue
                    level, markdown = len(match.group(1)), match.group(2)
                    text, nbconvert_id = heading_text(markdown)
                    anchor = base = f"{self.stem}--{slug(text)}"
                    for number in itertools.count(2):
                        if anchor not in taken:
                            break
                        anchor = f"{base}-{number}"
                    taken.add(anchor)
                    self.headings.append((level, text, anchor))
                    self.anchors.setdefault(unquote(nbconvert_id), anchor)
                    if level == 1 and self.title == self.stem:
                        self.title = text
                    if level == 2:
                        section, last_h2 = (anchor, text), (anchor, text, index, len(lines))
                    lines.append(f'{match.group(1)} <a id="{anchor}"></a>{markdown}')
            cell.source = "\n".join(lines)
        if last_h2:  # the rest of its cell, and the markdown cells up to the next code cell
            anchor, text, index, line = last_h2
            parts = ["\n".join(originals[index].split("\n")[line + 1:])]
            for cell, source in zip(self.nb.cells[index + 1:], originals[index + 1:]):
                if cell.cell_type != "markdown":
                    break
                parts.append(source)
            markdown = "\n\n".join(part.strip() for part in parts if part.strip())
            self.conclusion = (anchor, text, markdown) if markdown else None

    @property
    def short_title(self) -> str:
        """The title up to its colon: '06 · Results' for '06 · Results: how well ...'."""
        return self.title.split(":")[0].strip()


def rewrite_links(source: str, chapters: dict, current: Chapter | None) -> str:
    """Markdown links to notebooks of the report (`02_cleaning.ipynb`, `04_mlp.ipynb#id`, and
    `#id` within the current notebook) pointed at their anchors in the report; a link to a
    notebook not in the report is left as its plain text."""
    def target(link: str) -> str | None:
        match = NOTEBOOK_LINK.match(link)
        if match:
            chapter = chapters.get(match.group(1))
            if chapter is None:
                return None
            fragment = unquote(match.group(2) or "")
            return "#" + chapter.anchors.get(fragment, chapter.stem)
        if link.startswith("#") and current is not None:
            return "#" + current.anchors.get(unquote(link[1:]), link[1:])
        return link

    def markdown_link(match):
        new = target(match.group(2))
        if new is None:
            return match.group(1)
        return match.group(0) if new == match.group(2) else f"[{match.group(1)}]({new})"

    def html_href(match):
        return match.group(1) + (target(match.group(2)) or match.group(2)) + match.group(3)

    chunks = []
    for in_code, lines in markdown_chunks(source):
        text = "\n".join(lines)
        if not in_code:
            text = HTML_HREF.sub(html_href, MARKDOWN_LINK.sub(markdown_link, text))
        chunks.append(text)
    return "\n".join(chunks)


def load_results(metrics_dir, chapters: dict) -> tuple[dict | None, str]:
    """This run's 06_results metrics, or None and why not (not run, missing, unreadable)."""
    if RESULTS_NOTEBOOK not in chapters:
        return None, (f"Notebook {RESULTS_NOTEBOOK} is not part of this run, so this report "
                      "has no test-set results.")
    if metrics_dir is None:
        return None, "No test-set results: this report was built without the run's metrics."
    path = Path(metrics_dir) / f"{RESULTS_NOTEBOOK}.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"No test-set results: cannot read {path.name} ({exc})."
    headline = results.get("headline") if isinstance(results, dict) else None
    needed = {"model", "feature_set", "r2", "median_factor"}
    if not headline or not all(isinstance(r, dict) and needed <= r.keys() for r in headline):
        return None, f"No test-set results: {path.name} has no headline rows."
    return results, ""


def headline_table(results: dict) -> str:
    """The headline rows as an HTML table, the console summary's columns, with the CV R²
    (mean ± standard deviation across folds) and any `<metric>_low`/`_high` interval."""
    cv = {(r.get("model"), r.get("feature_set")): r for r in results.get("cv") or []
          if isinstance(r, dict) and {"r2_mean", "r2_std"} <= r.keys()}
    header, rows = [], []
    for key, title, _, _, number in SUMMARY_COLUMNS:
        header.append((title, bool(number)))
        if key == "r2" and cv:
            header.append(("CV R² (mean ± sd)", True))
    for row in results["headline"]:
        cells = []
        for key, _, _, _, number in SUMMARY_COLUMNS:
            text = metric_text(row, key, number)
            low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
            if number and all(isinstance(v, int | float) for v in (low, high)):
                text += f" [{format(low, number)}, {format(high, number)}]"
            cells.append((text, bool(number)))
            if key == "r2" and cv:
                fold = cv.get((row.get("model"), row.get("feature_set")))
                cells.append((f"{fold['r2_mean']:.3f} ± {fold['r2_std']:.3f}" if fold else "",
                              True))
        rows.append(cells)

    def tr(cells, tag):
        return "<tr>" + "".join(f'<{tag}{" class=number" if right else ""}>{html.escape(text)}'
                                f"</{tag}>" for text, right in cells) + "</tr>"

    return ('<table class="report-table">\n<thead>' + tr(header, "th") + "</thead>\n<tbody>\n"
            + "\n".join(tr(cells, "td") for cells in rows) + "\n</tbody>\n</table>")


def key_figures(figures_dir, chapters: dict) -> list[tuple[str, str, str, str]]:
    """(name, base64 PNG, where, anchor) of each figure a notebook of this run saved, in the
    order the notebooks save them; `where` names the section that shows it, at `anchor`."""
    figures = []
    for chapter in chapters.values() if figures_dir is not None else []:
        for name, (anchor, text) in chapter.figures.items():
            path = Path(figures_dir) / f"{name}.png"
            if path.is_file():
                where = chapter.short_title + (f" › {text}" if text else "")
                figures.append((name, base64.b64encode(path.read_bytes()).decode("ascii"),
                                where, anchor))
    return figures


def report_top(chapters: dict, results: dict | None, missing: str, figures: list,
               banner: str, data_name: str | None) -> str:
    """The first screen of the report (raw HTML): title, what ran, banner, the answer, the
    test-set table and the key figures."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    results_or_empty = results or {}
    data_name = data_name or results_or_empty.get("data")
    meta = [f"Data: {data_name}" if data_name else ""]
    if results:
        meta.append("quick (smoke) run" if results.get("quick") else "full run")
        meta.append(f"seed {results['seed']}" if "seed" in results else "")
    meta.append("notebooks " + ", ".join(chapters) if chapters else "no notebooks")
    parts = [f"<h1 id=\"top\">{html.escape(REPORT_TITLE)}</h1>",
             f'<p class="report-meta">{html.escape(" · ".join(m for m in meta if m))}</p>']
    nav = [("answer", "The answer"), ("results", "Test-set results")]
    nav += [("figures", "Key figures")] if figures else []
    results_chapter = chapters.get(RESULTS_NOTEBOOK)
    if results_chapter and results_chapter.conclusion:
        nav.append(("conclusions", "Conclusions"))
    nav += [("contents", "Contents")]
    parts.append('<p class="report-nav">' + "".join(f'<a href="#{a}">{t}</a>' for a, t in nav)
                 + '<button type="button" id="report-code-toggle" aria-pressed="false" hidden>'
                 "Show all code</button></p>")
    if banner:
        parts.append(f'<div class="report-banner" role="alert">'
                     f"{markdown2html_mistune(banner)}</div>")
    parts.append('<h2 id="answer">The answer</h2>')
    if results is None:
        parts.append(f'<p class="report-note">{html.escape(missing)}</p>')
        parts.append('<h2 id="results">Test-set results</h2>')
        parts.append(f'<p class="report-note">{html.escape(missing)}</p>')
    else:
        scored = (f"the {results['n_test']} test songs, held out from every fit and every choice "
                  f"({results['n_train']} songs for training and cross-validation)"
                  if {"n_test", "n_train"} <= results.keys() else "the held-out test songs")
        answer = (f"The models predict log10(streams) and are scored on {scored}. "
                  + takeaway(results["headline"]))
        parts.append(f'<p class="report-answer">{html.escape(answer)}</p>')
        if results.get("quick"):
            parts.append('<p class="report-note">A quick (smoke) run: fewer folds, repeats and '
                         "epochs than a full run; its numbers only show that the series works."
                         "</p>")
        parts.append('<h2 id="results">Test-set results</h2>')
        parts.append(f"<p>{html.escape(TEST_SET_NOTE)} {html.escape(TYPICAL_ERROR_NOTE)} "
                     "CV R²: mean ± standard deviation across the cross-validation folds of "
                     "the training songs (their spread, not a confidence interval).</p>")
        parts.append(headline_table(results))
    if figures:
        parts.append('<h2 id="figures">Key figures</h2>')
        for name, data, where, anchor in figures:
            parts.append(f'<figure class="report-figure" id="figure-{html.escape(name)}">'
                         f'<img src="data:image/png;base64,{data}" alt="{html.escape(where)}">'
                         f'<figcaption>From <a href="#{anchor}">{html.escape(where)}</a>'
                         "</figcaption></figure>")
    return "\n".join(parts)


def table_of_contents(chapters: dict) -> str:
    """Raw HTML: each notebook's title and its H2 sections, linked to their anchors."""
    items = []
    for chapter in chapters.values():
        sections = "".join(f'<li><a href="#{anchor}">{html.escape(text)}</a></li>'
                           for level, text, anchor in chapter.headings if level == 2)
        items.append(f'<li><a href="#{html.escape(chapter.stem)}">{html.escape(chapter.title)}</a>'
                     + (f"<ol>{sections}</ol>" if sections else "") + "</li>")
    return ('<nav class="report-toc"><h2 id="contents">Contents</h2>\n<ol>'
            + "\n".join(items) + "</ol></nav>")


def build_report(executed: list[Path], destination: Path, *, metrics_dir=None,
                 figures_dir=None, banner: str = "", data_name: str | None = None) -> None:
    """Render the executed notebooks as one self-contained HTML report (nbconvert's `lab`
    template; figures inline as base64): on top the answer, the test-set table (from
    metrics_dir/06_results.json), the figures the notebooks saved (figures_dir), the
    conclusions of 06; then a table of contents and each notebook as a section, code folded.
    Written atomically (helpers.replacing): a failed render leaves an earlier report.html
    in place."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    taken = {"top", "answer", "results", "figures", "conclusions", "contents"}
    chapters = {path.stem: Chapter(Path(path), taken) for path in executed}
    for chapter in chapters.values():
        for cell in chapter.nb.cells:
            if cell.cell_type == "markdown":
                cell.source = rewrite_links(cell.source, chapters, chapter)
    results, missing = load_results(metrics_dir, chapters)
    top = report_top(chapters, results, missing, key_figures(figures_dir, chapters), banner,
                     data_name)
    title = f"{REPORT_TITLE} ({data_name})" if data_name else REPORT_TITLE
    first = next(iter(chapters.values()), None)
    metadata = {"title": title}
    for key in ("kernelspec", "language_info"):
        if first is not None and key in first.nb.metadata:
            metadata[key] = first.nb.metadata[key]
    combined = nbformat.v4.new_notebook(metadata=metadata)

    def raw(source: str, cell_id: str):
        return nbformat.v4.new_raw_cell(source, id=cell_id, metadata={
            "raw_mimetype": "text/html", "report_html": True})  # the template's, unsanitized

    combined.cells.append(raw(top, "report-top"))
    conclusion = chapters[RESULTS_NOTEBOOK].conclusion if RESULTS_NOTEBOOK in chapters else None
    if conclusion:
        anchor, text, markdown = conclusion
        where = html.escape(f"{chapters[RESULTS_NOTEBOOK].short_title} › {text}")
        combined.cells.append(raw(
            f'<h2 id="conclusions">Conclusions</h2>\n<p>From <a href="#{anchor}">{where}</a> '
            "(“above”, “below” and section numbers there refer to that notebook):</p>\n"
            '<div class="report-conclusions">', "report-conclusions-start"))
        combined.cells.append(nbformat.v4.new_markdown_cell(
            rewrite_links(markdown, chapters, chapters[RESULTS_NOTEBOOK]),
            id="report-conclusions"))
        combined.cells.append(raw("</div>", "report-conclusions-end"))
    combined.cells.append(raw(table_of_contents(chapters), "report-contents"))
    for chapter in chapters.values():
        section = f'<section class="report-notebook" id="{html.escape(chapter.stem)}">'
        combined.cells.append(raw(section, f"{chapter.stem[:50]}-start"))
        combined.cells += chapter.nb.cells
        combined.cells.append(raw("</section>", f"{chapter.stem[:50]}-end"))

    config = Config({"TagRemovePreprocessor": {"enabled": True,
                                               "remove_cell_tags": PLUMBING_TAGS},
                     "CoalesceStreamsPreprocessor": {"enabled": True}})
    exporter = HTMLExporter(config=config, template_name="lab", template_file=REPORT_TEMPLATE,
                            extra_loaders=[DictLoader({REPORT_TEMPLATE: REPORT_TEMPLATE_SOURCE})],
                            exclude_input_prompt=True, exclude_output_prompt=True,
                            exclude_anchor_links=True)
    body, _ = exporter.from_notebook_node(combined)
    with import_helpers().replacing(destination) as partial:  # the old report until done
        partial.write_text(body, encoding="utf-8")


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
        helpers = import_helpers()
        notebooks = select_notebooks(Path(args.notebooks_dir), args.only)
        run = prepare_run(helpers, args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    banner = helpers.data_banner(run) if run.is_synthetic else ""  # one text: helpers'
    if banner:
        print(boxed(banner))
    out_dir = Path(args.output).resolve()
    out_notebooks = out_dir / "notebooks"
    out_notebooks.mkdir(parents=True, exist_ok=True)
    # Kernels inherit these; same settings as conftest.py (see there why): no TensorFlow
    # C++ start-up messages in cell outputs, CPU-independent TF numerics, stable set order.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("PYTHONHASHSEED", "0")
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
    sys.exit(main())
