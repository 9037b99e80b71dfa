"""The committed notebooks without a kernel: cells, parameters, prose numbers, no raw rows."""

import ast
import json
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from spotify_streams.config import RAW_DATA, ROOT, check_parameters
from spotify_streams.dataset import load_raw
from spotify_streams.features import log_streams
from spotify_streams.schema import NAME_COLUMNS

NOTEBOOKS = {path.stem: nbformat.read(path, as_version=4)
             for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
REPORTS = {str(path): path.read_text(encoding="utf-8")
           for path in sorted((ROOT / "reports").rglob("*")) if path.suffix in {".json", ".md"}}
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")


def period_table(data):
    """The `summary` of 01's period table (cells 01-32 and 01-33) run on `data`."""
    namespace = {"np": np, "pd": pd, "log_streams": log_streams, "data": data}
    for cell in NOTEBOOKS["01_eda"].cells:
        if cell.get("id") in ("01-32", "01-33"):
            exec(cell.source, namespace)
    return namespace["summary"]


@pytest.mark.parametrize("years, absent", [((2023, 2023), "≤2000"), ((1950, 1999), "2023")])
def test_01_period_table_works_for_any_subset(songs, capsys, years, absent):
    """The first 56 rows of the real file hold no release before 2001: KeyError '≤2000'."""
    subset = songs[songs["released_year"].between(*years)]
    summary = period_table(subset)
    assert absent not in summary.index and summary["count"].sum() == len(subset)
    assert "no songs" in capsys.readouterr().out
    later = period_table(songs.assign(released_year=songs["released_year"].replace(2023, 2025)))
    assert later["count"].sum() == len(songs) and "after 2023" in later.index  # counted


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_every_notebook_checks_all_its_parameters(stem):
    """setup_notebook gets every name of the parameters cell; the defaults pass the check."""
    code = [cell for cell in NOTEBOOKS[stem].cells if cell.cell_type == "code"]
    parameters = next(cell for cell in code if "parameters" in cell.metadata.get("tags", []))
    setup = ast.parse(code[code.index(parameters) + 1].source)
    call = next(node.value for node in setup.body if isinstance(node, ast.Assign)
                and getattr(getattr(node.value, "func", None), "id", "") == "setup_notebook")
    names = re.findall(r"^([A-Z_]+) =", parameters.source, re.M)
    assert names and sorted(k.arg for k in call.keywords) == sorted(names)
    assert all(isinstance(k.value, ast.Name) and k.value.id == k.arg for k in call.keywords)
    namespace = {}
    exec(parameters.source, namespace)
    check_parameters(**{name: namespace[name] for name in names})


def unstated(cells: list) -> dict:
    """Per markdown cell, its decimals (outside code and links) no output or code shows."""
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    shown = [cell.source for cell in cells if cell.cell_type == "code"]
    shown += [output.get("text", "") for output in outputs]
    shown += [output.get("data", {}).get(mime, "") for output in outputs
              for mime in ("text/plain", "text/html", "text/markdown")]
    numbers = set(DECIMAL.findall("\n".join(shown)))
    prose = {i: re.sub(r"\]\([^)]*\)", "]", re.sub(r"`[^`]*`", " ", cell.source))
             for i, cell in enumerate(cells) if cell.cell_type == "markdown"}
    missing = {i: sorted(set(DECIMAL.findall(text)) - numbers) for i, text in prose.items()}
    return {i: found for i, found in missing.items() if found}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_every_number_in_the_prose_is_in_an_output(stem):
    assert unstated(NOTEBOOKS[stem].cells) == {}, "numbers no output shows (cell: numbers)"


def test_a_number_typed_into_the_prose_is_caught():
    printed = new_output("stream", name="stdout", text="R² 0.812 ± 0.044, -0.031\n")
    assert unstated([new_code_cell(outputs=[printed]),
                     new_markdown_cell("R² 0.812, a drop of −0.031 (`alpha=0.5`)."),
                     new_markdown_cell("R² 0.813 on the test set.")]) == {2: ["0.813"]}


def leaks(names: set, notebooks=NOTEBOOKS, reports=REPORTS) -> list[tuple[str, str]]:
    """(where, name) for every name of the data file in a notebook's outputs or a report."""
    texts = {f"{stem} cell {number}": json.dumps(cell.get("outputs", []), ensure_ascii=False)
             for stem, notebook in notebooks.items() for number, cell in enumerate(notebook.cells)}
    texts.update(reports)
    return [(where, name) for where, text in texts.items() for name in names if name in text]


@pytest.mark.skipif(not RAW_DATA.is_file(), reason="no real data file: its names are looked for")
def test_no_song_or_artist_name_is_committed_and_a_leak_is_found():
    """The committed files are clean; a name in a cell's output or quoted in a report is found."""
    raw = load_raw(RAW_DATA)  # long names only: short ones are ordinary words
    names = {n for column in NAME_COLUMNS for n in raw[column].dropna().str.strip() if len(n) >= 12}
    assert len(names) > 500
    assert leaks(names) == [], "rows of the Kaggle file in committed files"
    song = sorted(names)[0]
    planted = new_notebook(cells=[new_markdown_cell("# raw rows"), new_code_cell(outputs=[
        new_output("stream", name="stdout", text=f"0  {song}  2023\n")])])
    found = leaks(names, {"planted": planted}, {"notes.md": f"the best song: {song}\n"})
    assert ("planted cell 1", song) in found and ("notes.md", song) in found


def test_raw_rows_cells_are_committed_without_their_output():
    tagged = [(stem, cell) for stem, notebook in NOTEBOOKS.items() for cell in notebook.cells
              if "raw-rows" in cell.metadata.get("tags", [])]
    assert len(tagged) >= 5
    for stem, cell in tagged:
        assert "nbval-ignore-output" in cell.metadata.tags, stem
        texts = [output.get("text", "") for output in cell.outputs]
        assert len(texts) == 1 and "left out of the committed notebook" in texts[0], stem
