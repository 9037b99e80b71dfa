"""The committed notebooks without a kernel: cells, parameters, prose numbers, no raw rows."""

import ast
import contextlib
import io
import json
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

from spotify_streams.config import RAW_DATA, ROOT, check_parameters
from spotify_streams.dataset import load_raw
from spotify_streams.features import log_streams
from spotify_streams.schema import NAME_COLUMNS

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPORT_FILES = sorted(p for p in (ROOT / "reports").rglob("*") if p.suffix in {".json", ".md"})
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")


def cells(path) -> list:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def run_cells(notebook, cell_ids, **names):
    """Execute cells in one namespace; the namespace and what they printed."""
    namespace, printed = {"np": np, "pd": pd, "log_streams": log_streams, **names}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell in cells(ROOT / "notebooks" / notebook):
            if cell.get("id") in cell_ids:
                exec("".join(cell["source"]), namespace)
    return namespace["summary"], printed.getvalue()


@pytest.mark.parametrize("years, absent", [((2023, 2023), "≤2000"), ((1950, 1999), "2023")])
def test_01_period_table_works_for_any_subset(songs, years, absent):
    """The first 56 rows of the real file hold no release before 2001: KeyError '≤2000'."""
    subset = songs[songs["released_year"].between(*years)]
    summary, printed = run_cells("01_eda.ipynb", ["01-32", "01-33"], data=subset)
    assert absent not in summary.index and summary["count"].sum() == len(subset)
    assert "no songs" in printed
    later = songs.assign(released_year=songs["released_year"].replace(2023, 2025))
    summary, _ = run_cells("01_eda.ipynb", ["01-32", "01-33"], data=later)
    assert summary["count"].sum() == len(later) and "after 2023" in summary.index  # counted


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_checks_all_its_parameters(path):
    """setup_notebook gets every name of the parameters cell; the defaults pass the check."""
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    parameters = next(c for c in code if "parameters" in c["metadata"].get("tags", []))
    setup = ast.parse("".join(code[code.index(parameters) + 1]["source"]))
    call = next(node.value for node in setup.body if isinstance(node, ast.Assign)
                and getattr(getattr(node.value, "func", None), "id", "") == "setup_notebook")
    names = re.findall(r"^([A-Z_]+) =", source := "".join(parameters["source"]), re.M)
    assert names and sorted(k.arg for k in call.keywords) == sorted(names)
    assert all(isinstance(k.value, ast.Name) and k.value.id == k.arg for k in call.keywords)
    namespace = {}
    exec(source, namespace)
    check_parameters(**{name: namespace[name] for name in names})


def unstated(nb_cells: list) -> dict:
    """Per markdown cell, its decimals (outside code and links) no output or code shows."""
    parts = ["".join(c["source"]) for c in nb_cells if c["cell_type"] == "code"]
    for out in [o for c in nb_cells for o in c.get("outputs", [])]:
        parts += ["".join(out.get("text", ""))] + ["".join(out.get("data", {}).get(m, ""))
                                                   for m in ("text/plain", "text/html",
                                                             "text/markdown")]
    shown = set(DECIMAL.findall("\n".join(parts)))
    missing = {}
    for i, cell in enumerate(nb_cells):
        text = re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", " ", "".join(cell["source"])))
        if cell["cell_type"] == "markdown" and (absent := set(DECIMAL.findall(text)) - shown):
            missing[i] = sorted(absent)
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_is_in_an_output(path):
    assert unstated(cells(path)) == {}, f"{path.name}: numbers no output shows (cell: numbers)"


def test_a_number_typed_into_the_prose_is_caught():
    assert unstated([
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "R² 0.812 ± 0.044, -0.031\n"}]},
        {"cell_type": "markdown", "source": "R² 0.812, a drop of −0.031 (`alpha=0.5`)."},
        {"cell_type": "markdown", "source": "R² 0.813 on the test set."}]) == {2: ["0.813"]}


def leaks(names: set, notebooks=NOTEBOOKS, reports=REPORT_FILES) -> list[tuple[str, str]]:
    """(where, name) for every name of the data file in a notebook's outputs or a report."""
    texts = [(f"{path.name} cell {number}", json.dumps(cell.outputs, ensure_ascii=False))
             for path in notebooks for number, cell in enumerate(nbformat.read(path, 4).cells)
             if cell.cell_type == "code"]
    texts += [(str(path), path.read_text(encoding="utf-8")) for path in reports]
    return [(where, name) for where, text in texts for name in names if name in text]


@pytest.fixture(scope="module")
def names():
    if not RAW_DATA.is_file():
        pytest.skip("the real data file is absent (its names are what is looked for)")
    raw = load_raw(RAW_DATA)  # long names only: short ones are ordinary words
    found = {n for column in NAME_COLUMNS for n in raw[column].dropna().str.strip() if len(n) >= 12}
    assert len(found) > 500
    return found


def test_no_song_or_artist_name_is_committed_and_a_leak_is_found(names, tmp_path):
    """The committed files are clean; a raw-rows cell's output and a quoting report are found."""
    assert not (found := leaks(names)), f"rows of the Kaggle file in committed files: {found[:10]}"
    song = sorted(names)[0]
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in nb.cells if "raw-rows" in c.metadata.get("tags", []))
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"0  {song}  2023\n")]
    nbformat.write(nb, planted := tmp_path / NOTEBOOKS[0].name)
    (report := tmp_path / "notes.md").write_text(f"the best song: {song}\n", encoding="utf-8")
    found = leaks(names, [planted], [report])
    assert (f"{planted.name} cell {nb.cells.index(cell)}", song) in found
    assert (str(report), song) in found


def test_raw_rows_cells_are_committed_without_their_output():
    tagged = [(path.name, cell) for path in NOTEBOOKS for cell in nbformat.read(path, 4).cells
              if "raw-rows" in cell.metadata.get("tags", [])]
    assert len(tagged) >= 5
    for name, cell in tagged:
        assert "nbval-ignore-output" in cell.metadata.tags, name
        texts = [o.get("text", "") for o in cell.outputs]
        assert len(texts) == 1 and "left out of the committed notebook" in texts[0], name
