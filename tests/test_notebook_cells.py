"""Single notebook cells run on their own on small frames (no kernel, no nbval): code that
must work on any subset of the data, not only on the real file."""

import contextlib
import io
import json
import re

import numpy as np
import pandas as pd
import pytest

import helpers


def cell_source(notebook: str, cell_id: str) -> str:
    nb = json.loads((helpers.ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    return next("".join(c["source"]) for c in nb["cells"] if c.get("id") == cell_id)


def run_cells(notebook, cell_ids, **names):
    """Execute cells in one namespace; returns the namespace and what they printed."""
    namespace = {"np": np, "pd": pd, "log_streams": helpers.log_streams, **names}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for cell_id in cell_ids:
            exec(cell_source(notebook, cell_id), namespace)
    return namespace, printed.getvalue()


@pytest.fixture(scope="module")
def sample_data():
    return helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data


@pytest.mark.parametrize("years, absent", [((2023, 2023), "≤2000"), ((1950, 1999), "2023")])
def test_01_period_table_works_for_any_subset(sample_data, years, absent):
    """The first 56 rows of the real file hold no release before 2001: KeyError '≤2000'."""
    subset = sample_data[sample_data["released_year"].between(*years)]
    namespace, printed = run_cells("01_eda.ipynb", ["01-32", "01-33"], data=subset)
    assert absent not in namespace["summary"].index.tolist()
    assert namespace["summary"]["count"].sum() == len(subset)
    assert "no songs" in printed


def test_01_period_table_counts_every_song(sample_data):
    """Releases after the last labelled year get their own row instead of vanishing."""
    later = sample_data.assign(released_year=sample_data["released_year"].replace(2023, 2025))
    namespace, _ = run_cells("01_eda.ipynb", ["01-32", "01-33"], data=later)
    assert namespace["summary"]["count"].sum() == len(later)
    assert "after 2023" in namespace["summary"].index.tolist()


NOTEBOOKS = sorted(p.name for p in (helpers.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def parameter_cell_and_check(notebook: str):
    """The notebook's parameters cell, and the setup_notebook call of its setup code, as a
    check_parameters call with the same arguments (setup_notebook checks them first)."""
    import ast

    nb = json.loads((helpers.ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    parameters = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    setup = ast.parse("".join(cells[cells.index(parameters) + 1]["source"]))
    call = next(node.value for node in setup.body if isinstance(node, ast.Assign)
                and getattr(node.value, "func", None) is not None
                and getattr(node.value.func, "id", "") == "setup_notebook")
    call.func.id = "check_parameters"
    return "".join(parameters["source"]), ast.unparse(call)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_checks_all_its_parameters(notebook):
    parameters, check = parameter_cell_and_check(notebook)
    names = re.findall(r"^([A-Z_]+) =", parameters, re.M)
    assert names and all(f"{name}={name}" in check for name in names)
    namespace = {"check_parameters": helpers.check_parameters}
    exec(parameters, namespace)
    exec(check, namespace)  # the defaults pass
    exec(parameters + "\nQUICK = 'yes'\n", namespace)  # what `papermill -p QUICK yes` injects
    with pytest.raises(helpers.DataError, match="QUICK must be True or False, not 'yes'"):
        exec(check, namespace)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_keeps_quick_runs_out_of_reports(notebook):
    nb = json.loads((helpers.ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    setup = "".join(nb["cells"][2]["source"])
    assert "setup_notebook(DATA_PATH=DATA_PATH, OUTPUT_DIR=OUTPUT_DIR, SEED=SEED, QUICK=QUICK" \
        in setup
