"""No part of the Kaggle file is committed: not in notebook outputs, not in reports/.

Cells that show rows of the file are tagged `raw-rows`; `run_series.py --refresh` replaces
their output with a note before a notebook is committed (and nbval ignores their output).
Checked here against the real file's own song and artist names, when the file is present."""

import json
from pathlib import Path

import nbformat
import pytest

import helpers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPORT_FILES = sorted(p for p in (ROOT / "reports").rglob("*") if p.suffix in {".json", ".md"})
RAW_ROWS_TAG = "raw-rows"


def committed_texts():
    """(where, text) of every committed notebook output and every text file in reports/."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for number, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                yield f"{path.name} cell {number}", json.dumps(cell.outputs, ensure_ascii=False)
    for path in REPORT_FILES:
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


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
    leaks = [(where, name) for where, text in committed_texts() for name in names
             if name in text]
    assert not leaks, f"rows of the Kaggle file in committed files: {leaks[:10]}"


def test_the_check_finds_a_leak(names):
    text = "an output that shows " + sorted(names)[0]
    assert any(name in text for name in names)


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
