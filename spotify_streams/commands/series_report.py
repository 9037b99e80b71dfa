"""The series' HTML report, and the test-set table it shares with the console and the README.

build_report renders the executed notebooks with nbconvert's HTMLExporter and the template
templates/series_report/ beside this module (one self-contained file that works offline): on
top the answer, the test-set table (models × feature sets, from metrics/06_results.json), the
key figures the notebooks saved and the conclusions of 06; then a table of contents and each
notebook as a section, code folded, papermill's parameters cells left out. This module builds
the data; all HTML is in the template.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

from spotify_streams.config import ROOT
from spotify_streams.files import replacing

# nbconvert's template directories: package data beside this module, also after a
# non-editable install (pyproject.toml, [tool.setuptools.package-data])
TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "series_report"
REPORT_TITLE = "Predicting Spotify streams — results report"
NOTEBOOKS_DIR = ROOT / "notebooks"  # where the notebooks' relative links start
RESULTS_NOTEBOOK = "06_results"  # writes metrics/06_results.json; its last section concludes
# The notebooks' own parameters cell and papermill's injected copy of it (with absolute local
# paths): plumbing, left out of the report.
PLUMBING_TAGS = ["parameters", "injected-parameters"]
FULL_SET = "full"  # the feature set whose typical error the table shows
NONE = "—"  # a model that did not run on a feature set
TEST_SET_NOTE = ("Test set (songs held out from every fit and every choice), predicting "
                 "log10(streams).")
TYPICAL_ERROR_NOTE = ("'typical error' ×f: half of the songs are predicted within a factor f "
                      "of their real stream count.")
TABLE_CAPTION = "Test R² [95 % interval] of each model on each feature set"


def headline_table(headline: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The headline rows (`model`, `feature_set`, `r2`, optional `r2_low`/`r2_high`,
    `median_factor`) as (column titles, rows) of a table of models × feature sets, in the
    order they first appear: each cell the test R² [its 95 % interval], NONE where a model
    did not run on a set; the last column the typical error on the full set (on the last set
    where there is no full one). The console summary, the report and the README show it."""
    sets = list(dict.fromkeys(row["feature_set"] for row in headline))
    models = list(dict.fromkeys(row["model"] for row in headline))
    cells = {(row["model"], row["feature_set"]): row for row in headline}
    last = FULL_SET if FULL_SET in sets else sets[-1]

    def r2(row):
        if row is None:
            return NONE
        interval = (row.get("r2_low"), row.get("r2_high"))
        known = all(isinstance(value, int | float) for value in interval)
        return f"{row['r2']:.3f}" + (" [{:.2f}, {:.2f}]".format(*interval) if known else "")

    def factor(row):
        return NONE if row is None else f"×{row['median_factor']:.2f}"

    rows = [[model, *(r2(cells.get((model, fs))) for fs in sets), factor(cells.get((model, last)))]
            for model in models]
    return ["model", *sets, f"typical error ({last} set)"], rows


def takeaway(results: dict) -> str:
    """One sentence from 06's metrics: the final model and the forecaster as notebook 06 chose
    them (the simplest within the noise of the best in cross-validation, never by test score),
    with their test R² and typical error."""
    rows = {(row["model"], row["feature_set"]): row for row in results.get("headline", [])}
    parts = []
    for key, fs, role in [("final_model", "full", "Final model"),
                          ("forecaster", "pre-release", "pre-release forecaster")]:
        row = rows.get((results.get(key), fs))
        if row is not None:
            parts.append(f"{role} (chosen in cross-validation): {row['model']} on the {fs} "
                         f"features, test R² {row['r2']:.3f} [{row['r2_low']:.2f}, "
                         f"{row['r2_high']:.2f}]; half of its songs are within a factor of "
                         f"{row['median_factor']:.2f} of their real stream count")
    return ". The ".join(parts) + "." if parts else ""


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


def rewrite_links(source: str, chapters: dict, current: Chapter | None,
                  report_dir: Path | None = None) -> str:
    """Markdown links to notebooks of the report (`02_cleaning.ipynb`, `04_mlp.ipynb#id`, and
    `#id` within the current notebook) pointed at their anchors in the report; a link to a
    notebook not in the report is left as its plain text. Other relative links (a notebook's
    `../docs/model_card.md`) are written relative to report_dir, so they still land."""
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
        if report_dir is not None and not re.match(r"[a-z][\w+.-]*:|#|/", link, re.I):
            return Path(os.path.relpath(NOTEBOOKS_DIR / link, report_dir)).as_posix()
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


def key_figures(figures_dir, chapters: dict) -> list[dict]:
    """Each figure a notebook of this run saved (name, base64 PNG data, `where`: the section
    that shows it, at `anchor`), in the order the notebooks save them."""
    figures = []
    for chapter in chapters.values() if figures_dir is not None else []:
        for name, (anchor, text) in chapter.figures.items():
            path = Path(figures_dir) / f"{name}.png"
            if path.is_file():
                figures.append({"name": name, "anchor": anchor,
                                "data": base64.b64encode(path.read_bytes()).decode("ascii"),
                                "where": chapter.short_title + (f" › {text}" if text else "")})
    return figures


def build_report(executed: list[Path], destination: Path, *, metrics_dir=None,
                 figures_dir=None, banner: str = "", data_name: str | None = None) -> None:
    """Render the executed notebooks as one self-contained HTML report with the template
    series_report (figures inline as base64): the test-set table from
    metrics_dir/06_results.json, the figures the notebooks saved in figures_dir, `banner`
    (markdown) on top. Written atomically (files.replacing): a failed render leaves an
    earlier report.html in place."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    taken = {"top", "answer", "results", "figures", "conclusions", "contents"}
    chapters = {path.stem: Chapter(Path(path), taken) for path in executed}
    for chapter in chapters.values():
        for cell in chapter.nb.cells:
            if cell.cell_type == "markdown":
                cell.source = rewrite_links(cell.source, chapters, chapter,
                                            Path(destination).resolve().parent)
    results, missing = load_results(metrics_dir, chapters)
    data_name = data_name or (results or {}).get("data")
    meta = [f"Data: {data_name}" if data_name else ""]
    if results:
        meta += ["quick (smoke) run" if results.get("quick") else "full run",
                 f"seed {results['seed']}" if "seed" in results else ""]
    meta.append("notebooks " + ", ".join(chapters) if chapters else "no notebooks")
    report = {"title": REPORT_TITLE, "meta": meta, "banner": banner, "results": results,
              "missing": missing, "notes": f"{TEST_SET_NOTE} {TYPICAL_ERROR_NOTE}",
              "figures": key_figures(figures_dir, chapters), "conclusion": None,
              "chapters": list(chapters.values())}
    if results:
        columns, rows = headline_table(results["headline"])
        report["table"] = {"caption": TABLE_CAPTION, "columns": columns, "rows": rows,
                           "none": NONE}
        report["takeaway"] = takeaway(results)
    last = chapters.get(RESULTS_NOTEBOOK)
    if last is not None and last.conclusion:
        anchor, text, markdown = last.conclusion
        report["conclusion"] = {"anchor": anchor, "where": f"{last.short_title} › {text}",
                                "markdown": rewrite_links(markdown, chapters, last,
                                                          Path(destination).resolve().parent)}

    first = next(iter(chapters.values()), None)
    metadata = {"title": f"{REPORT_TITLE} ({data_name})" if data_name else REPORT_TITLE}
    for key in ("kernelspec", "language_info"):
        if first is not None and key in first.nb.metadata:
            metadata[key] = first.nb.metadata[key]
    combined = nbformat.v4.new_notebook(metadata=metadata)
    for chapter in chapters.values():  # the template wraps each in a <section>
        def mark(section, stem=chapter.stem):
            return nbformat.v4.new_raw_cell("", id=f"{stem[:50]}-{section}", metadata={
                "report_section": section, "report_chapter": stem})
        combined.cells += [mark("start"), *chapter.nb.cells, mark("end")]

    config = Config({"TagRemovePreprocessor": {"enabled": True,
                                               "remove_cell_tags": PLUMBING_TAGS},
                     "CoalesceStreamsPreprocessor": {"enabled": True}})
    exporter = HTMLExporter(config=config, template_name=TEMPLATE_NAME,
                            extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input_prompt=True, exclude_output_prompt=True,
                            exclude_anchor_links=True)
    body, _ = exporter.from_notebook_node(combined, resources={"report": report})
    with replacing(destination) as partial:  # the old report until done
        partial.write_text(body, encoding="utf-8")
