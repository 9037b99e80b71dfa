"""No part of the Kaggle file is committed: not in notebook outputs, not in reports/.

Cells that show rows of the file are tagged `raw-rows`; `run_series.py --refresh` replaces
their output with a note before a notebook is committed (and nbval ignores their output).
leaks() looks for the real file's own song and artist names in every committed output and
report; it is run on the committed files and on a notebook planted with a leaking row."""

import json
from pathlib import Path

import nbformat
import pytest

import helpers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPORT_FILES = sorted(p for p in (ROOT / "reports").rglob("*") if p.suffix in {".json", ".md"})
RAW_ROWS_TAG = "raw-rows"


def leaks(names: set, notebooks=NOTEBOOKS, reports=REPORT_FILES) -> list[tuple[str, str]]:
    """(where, name) for every name of the data file found in a notebook's outputs or a
    report file."""
    texts = [(f"{path.name} cell {number}", json.dumps(cell.outputs, ensure_ascii=False))
             for path in notebooks for number, cell in enumerate(nbformat.read(path, 4).cells)
             if cell.cell_type == "code"]
    texts += [(str(path), path.read_text(encoding="utf-8")) for path in reports]
    return [(where, name) for where, text in texts for name in names if name in text]


@pytest.fixture(scope="module")
def names():
    if not helpers.RAW_DATA.is_file():
        pytest.skip("the real data file is absent (its names are what is looked for)")
    raw = helpers.load_raw(helpers.RAW_DATA)
    found = set()
    for column in helpers.NAME_COLUMNS:  # long names only: short ones are ordinary words
        found |= {n for n in raw[column].dropna().str.strip() if len(n) >= 12}
    assert len(found) > 500
    return found


def test_no_song_or_artist_name_is_committed(names):
    found = leaks(names)
    assert not found, f"rows of the Kaggle file in committed files: {found[:10]}"


def test_the_check_finds_a_leaking_row(names, tmp_path):
    """A committed notebook whose raw-rows cell kept its output (a row of the file, printed as
    pandas prints it), and a report that quotes a song: both are found."""
    song = sorted(names)[0]
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    cell = next(c for c in nb.cells if RAW_ROWS_TAG in c.metadata.get("tags", []))
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"0  {song}  2023\n")]
    planted = tmp_path / NOTEBOOKS[0].name
    nbformat.write(nb, planted)
    report = tmp_path / "notes.md"
    report.write_text(f"the best-predicted song: {song}\n", encoding="utf-8")
    found = leaks(names, [planted], [report])
    assert (f"{planted.name} cell {nb.cells.index(cell)}", song) in found
    assert (str(report), song) in found


def test_raw_rows_cells_are_committed_without_their_output():
    tagged = 0
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if RAW_ROWS_TAG in cell.metadata.get("tags", []):
                tagged += 1
                assert "nbval-ignore-output" in cell.metadata.tags, path.name
                texts = [o.get("text", "") for o in cell.outputs]
                assert len(texts) == 1 and "left out of the committed notebook" in texts[0], (
                    f"{path.name}: a raw-rows cell keeps its output")
    assert tagged >= 5
