"""The committed notebooks' prose states numbers their own outputs computed.

Every decimal number in a notebook's markdown (outside code spans) must appear in the text
outputs of that notebook's code cells, or in its code (a setting such as a learning rate of
0.001 is a fact of the code): a result typed into the prose by hand, or left behind when a
refresh changed the outputs, fails here. Numbers are compared as printed, with the
sign's typography (−, -, +) ignored.
"""

import json
import re

import pytest

import helpers

NOTEBOOKS = sorted((helpers.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")


def prose_numbers(markdown: str) -> set:
    text = re.sub(r"`[^`]*`", " ", markdown)  # code spans: names and examples, not results
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    return set(DECIMAL.findall(text))


def output_text(nb: dict) -> str:
    parts = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append("".join(out["text"]))
            for mime in ("text/plain", "text/html", "text/markdown"):
                parts.append("".join(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def unstated(nb: dict) -> dict:
    """Per markdown cell, the decimal numbers that neither an output nor the code shows."""
    outputs = set(DECIMAL.findall(output_text(nb)))
    missing = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            absent = prose_numbers("".join(cell["source"])) - outputs
            if absent:
                missing[i] = sorted(absent)
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_is_in_an_output(path):
    missing = unstated(json.loads(path.read_text(encoding="utf-8")))
    assert missing == {}, (f"{path.name}: markdown cells state numbers that no output of the "
                           f"notebook shows (cell: numbers): {missing}")


def test_a_number_typed_into_the_prose_is_caught():
    nb = {"cells": [
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "R² 0.812 ± 0.044, -0.031\n"}]},
        {"cell_type": "markdown", "source": "R² 0.812, a drop of −0.031 (`alpha=0.5`)."},
        {"cell_type": "markdown", "source": "R² 0.813 on the test set."}]}
    assert unstated(nb) == {2: ["0.813"]}
