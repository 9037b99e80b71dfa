"""Tests of scripts/run_series.py on tiny throwaway notebooks (not the real series).

Most tests replace the helpers module by a stub, so they test the driver alone; one test
(test_bad_csv_with_real_helpers) runs the real command line with the real helpers.
Each executed notebook starts a real Jupyter kernel (about a second each).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_series.py"
PARAMETERS = "DATA_PATH = None\nOUTPUT_DIR = None\nSEED = 42\nQUICK = False"


@pytest.fixture(scope="module")
def run_series():
    """The driver script imported as a module."""
    spec = importlib.util.spec_from_file_location("run_series", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_notebook(folder: Path, name: str, *sources: str) -> Path:
    """A notebook with the series' parameters cell followed by the given code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {name}"))
    nb.cells.append(nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def stub_helpers(monkeypatch, tmp_path, *, synthetic=False, data_error=None, real_file=None):
    """Install a fake helpers module exposing what the driver uses."""
    import helpers as real_helpers

    stub = types.ModuleType("helpers")

    class DataError(ValueError):
        pass

    def resolve_run(data_path=None, output_dir=None):
        out = Path(output_dir) if output_dir is not None else tmp_path / "default-out"
        data = Path(data_path) if data_path is not None else tmp_path / "default.csv"
        return types.SimpleNamespace(data_path=data, metrics_dir=out / "metrics",
                                     is_synthetic=synthetic)

    def check_data(path):
        if data_error:
            raise DataError(data_error)

    stub.DOWNLOAD_HINT = "Download it: kaggle datasets download -d x/y -p data --unzip"
    stub.data_banner = lambda run: "SYNTHETIC SAMPLE: made-up numbers. " + stub.DOWNLOAD_HINT
    stub.file_sha256 = lambda path: hashlib.sha256(Path(path).read_bytes()).hexdigest()
    stub.DataError = DataError
    stub.resolve_run = resolve_run
    stub.check_data = check_data
    stub.check_parameters = lambda **parameters: None
    stub.replacing = real_helpers.replacing  # plumbing the driver shares (atomic writes)
    stub.RAW_DATA = real_file if real_file is not None else tmp_path / "absent.csv"
    stub.REAL_SHA256 = "0" * 64
    if real_file is not None and real_file.exists():
        stub.REAL_SHA256 = hashlib.sha256(real_file.read_bytes()).hexdigest()
    monkeypatch.setitem(sys.modules, "helpers", stub)
    return stub


@pytest.fixture
def folder(tmp_path):
    """An empty folder for a test's stub notebooks."""
    path = tmp_path / "nbs"
    path.mkdir()
    return path


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "songs.csv"
    path.write_bytes(b"track_name,streams\r\nA,1\r\n")
    return path


def test_success_writes_notebooks_report_and_summary(run_series, tmp_path, csv_file,
                                                     monkeypatch, capsys, folder):
    stub_helpers(monkeypatch, tmp_path)
    write_notebook(folder, "01_first", "print('seed is', SEED, 'quick is', QUICK)")
    write_notebook(folder, "06_results", (
        "import json, pathlib\n"
        "metrics = pathlib.Path(OUTPUT_DIR) / 'metrics'\n"
        "metrics.mkdir(parents=True, exist_ok=True)\n"
        "row = dict(model='ridge', feature_set='platform', r2=0.51, mae=0.3, median_factor=2.0)\n"
        "(metrics / '06_results.json').write_text(json.dumps({'headline': [row]}))"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    csv_before = csv_file.read_bytes()
    out = tmp_path / "out"

    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--output", str(out), "--seed", "7", "--quick"])

    printed = capsys.readouterr().out
    assert code == 0
    executed = nbformat.read(out / "notebooks" / "01_first.ipynb", as_version=4)
    text = json.dumps(executed.cells[-1].outputs)
    assert "seed is 7 quick is True" in text
    html = (out / "report.html").read_text()
    assert "01_first" in html and "06_results" in html and "seed is 7 quick is True" in html
    assert "[1/2] 01_first" in printed and "[2/2] 06_results" in printed
    assert "ridge" in printed and "0.510" in printed and "×2.00" in printed
    assert "Test set" in printed and "typical error" in printed  # labelled, not raw keys
    # the report's table of models × feature sets (series_report.headline_table), aligned
    assert re.search(r"^model +platform +typical error \(platform set\)\n"
                     r"ridge +0\.510 +×2\.00\n", printed, re.M), printed
    assert "Best: ridge on the platform features, test R² 0.510" in printed
    assert (out / "report.html").resolve().as_uri() in printed  # a link a terminal can open
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # inputs untouched
    assert csv_file.read_bytes() == csv_before
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == [
        "01_first.ipynb", "06_results.ipynb"]  # no temp or .failed leftovers
    status = json.loads((out / "RUN_STATUS.json").read_text())
    assert status["status"] == "complete" and status["notebooks_done"] == ["01_first",
                                                                            "06_results"]


def test_failing_notebook_exits_1_and_keeps_previous_output(run_series, tmp_path, csv_file,
                                                            monkeypatch, capsys, folder):
    stub_helpers(monkeypatch, tmp_path)
    write_notebook(folder, "01_ok", "x = 1")
    write_notebook(folder, "02_boom", "y = 2", "# fit the model\nraise ValueError('boom 42')")
    write_notebook(folder, "03_later", "z = 3")
    out = tmp_path / "out"
    (out / "notebooks").mkdir(parents=True)
    previous = out / "notebooks" / "02_boom.ipynb"
    previous.write_text("output of an earlier successful run")

    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--output", str(out)])

    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED 02_boom" in err
    assert "ValueError: boom 42" in err
    assert "# fit the model" in err and "cell " in err
    assert (out / "notebooks" / "02_boom.failed.ipynb").is_file()
    assert previous.read_text() == "output of an earlier successful run"
    assert (out / "notebooks" / "01_ok.ipynb").is_file()
    assert not (out / "notebooks" / "03_later.ipynb").exists()
    assert not (out / "report.html").exists()
    assert not list((out / "notebooks").glob(".*"))
    status = json.loads((out / "RUN_STATUS.json").read_text())  # the mix is marked
    assert status["status"] == "failed" and status["notebooks_done"] == ["01_ok"]
    assert "02_boom failed" in status["meaning"] and "earlier run" in status["meaning"]
    assert "incomplete" in err


def test_sigterm_leaves_no_hidden_files_and_marks_the_run(tmp_path, folder):
    """A run stopped with SIGTERM (a CI timeout, `kill`) keeps the partial notebook as
    NN.failed.ipynb, leaves no hidden temp file and says the output is incomplete."""
    import signal
    import time

    write_notebook(folder, "01_slow", "import time\nprint('started', flush=True)\ntime.sleep(60)")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--notebooks-dir", str(folder),
                             "--data", str(ROOT / "data" / "sample" / "synthetic-songs.csv"),
                             "--output", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((out / "notebooks").glob(".01_slow.running.ipynb")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(3)  # the kernel is running the sleeping cell
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted during 01_slow" in err
    assert "running over TCP" not in err  # the kernel's start-up warning is silenced
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["01_slow.failed.ipynb"]
    assert json.loads((out / "RUN_STATUS.json").read_text())["status"] == "interrupted"


def test_data_error_exits_2_before_running_anything(run_series, tmp_path, csv_file,
                                                    monkeypatch, capsys, folder):
    stub_helpers(monkeypatch, tmp_path, data_error="songs.csv has a header but no data rows.")
    write_notebook(folder, "01_marker", "open('ran.txt', 'w').write('ran')")
    out = tmp_path / "out"

    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--output", str(out)])

    captured = capsys.readouterr()
    assert code == 2
    assert "error: songs.csv has a header but no data rows." in captured.err
    assert not (folder / "ran.txt").exists() and not out.exists()


def test_missing_data_file_and_unknown_notebook_exit_2(run_series, tmp_path, monkeypatch, capsys,
                                                       folder):
    stub_helpers(monkeypatch, tmp_path)
    write_notebook(folder, "01_only", "pass")
    missing = tmp_path / "no.csv"
    assert run_series.main(["--notebooks-dir", str(folder), "--data", str(missing)]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert run_series.main(["--notebooks-dir", str(folder), "--only", "09"]) == 2
    assert "no notebook numbered 09" in capsys.readouterr().err


def test_only_runs_the_subset_and_shows_synthetic_banner(run_series, tmp_path, csv_file,
                                                         monkeypatch, capsys, folder):
    stub_helpers(monkeypatch, tmp_path, synthetic=True)
    write_notebook(folder, "01_skipped", "pass")
    write_notebook(folder, "02_run", "pass")
    out = tmp_path / "out"

    code = run_series.main(["--notebooks-dir", str(folder), "--only", "2", "--output", str(out)])

    printed = capsys.readouterr().out
    assert code == 0
    assert [p.name for p in (out / "notebooks").iterdir()] == ["02_run.ipynb"]
    assert printed.count("SYNTHETIC") == 2  # before the run and in the summary
    assert "kaggle datasets download" in printed
    assert "no headline metrics (06 not run)" in printed


def test_refresh_needs_the_real_file(run_series, tmp_path, monkeypatch, capsys, folder):
    stub_helpers(monkeypatch, tmp_path)  # RAW_DATA absent
    notebook = write_notebook(folder, "01_committed", "print('fresh')")
    before = notebook.read_bytes()
    assert run_series.main(["--notebooks-dir", str(folder), "--refresh",
                            "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--refresh needs the real data file" in err and "kaggle" in err
    assert notebook.read_bytes() == before


def test_refresh_executes_in_place_without_parameters(run_series, tmp_path, monkeypatch, capsys,
                                                      folder):
    real = tmp_path / "spotify-2023.csv"
    real.write_text("pretend this is the real file\n")
    stub_helpers(monkeypatch, tmp_path, real_file=real)
    notebook = write_notebook(folder, "01_committed", "print('data is', DATA_PATH)",
                              "print('Some Song Title | Some Artist | 123456789')")
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[-1].metadata["tags"] = ["raw-rows", "nbval-ignore-output"]
    nbformat.write(nb, notebook)

    code = run_series.main(["--notebooks-dir", str(folder), "--refresh",
                            "--output", str(tmp_path / "out")])

    assert code == 0, capsys.readouterr().err
    nb = nbformat.read(notebook, as_version=4)
    assert len(nb.cells) == 4  # no injected-parameters cell
    assert "data is None" in json.dumps(nb.cells[-2].outputs)
    assert "papermill" not in nb.metadata and "papermill" not in nb.cells[-2].metadata
    raw_rows = json.dumps(nb.cells[-1].outputs)  # a cell showing rows of the data file
    assert "Some Song" not in raw_rows and "left out of the committed notebook" in raw_rows
    assert sorted(p.name for p in folder.iterdir()) == ["01_committed.ipynb"]


def test_bad_csv_with_real_helpers(tmp_path, folder):
    """The real command line and the real helpers: a header-only CSV is refused (exit 2),
    before any notebook runs, and the file is left byte-identical."""
    import helpers

    sample = helpers.SAMPLE_DATA
    header_only = tmp_path / "header-only.csv"
    header_only.write_bytes(sample.read_bytes().splitlines(keepends=True)[0])
    before = header_only.read_bytes()
    write_notebook(folder, "01_marker", "open('ran.txt', 'w').write('ran')")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--notebooks-dir", str(folder),
         "--data", str(header_only), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "no data rows" in result.stderr
    assert header_only.read_bytes() == before
    assert not (folder / "ran.txt").exists() and not (tmp_path / "out").exists()


# --- bad usage: a clear 'error:' line and exit 2, never a traceback ------------------------------

def one_notebook(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder, "01_marker", "open('ran.txt', 'w').write('ran')")
    return folder


def test_output_that_is_a_file_exits_2(run_series, tmp_path, csv_file, monkeypatch, capsys):
    stub_helpers(monkeypatch, tmp_path)
    folder = one_notebook(tmp_path)
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    for output in [existing, existing / "sub"]:
        code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                                "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err
        assert "--output" in err and str(existing) in err
    assert existing.read_text() == "keep me" and not (folder / "ran.txt").exists()


def test_unwritable_output_exits_2(run_series, tmp_path, csv_file, monkeypatch, capsys):
    stub_helpers(monkeypatch, tmp_path)
    folder = one_notebook(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_series.tempfile, "TemporaryFile", refuse)  # root ignores chmod
    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: cannot write to --output" in err and "Permission denied" in err
    assert not (folder / "ran.txt").exists()


def test_a_folder_as_data_is_named_as_a_folder(run_series, tmp_path, monkeypatch, capsys):
    stub_helpers(monkeypatch, tmp_path)
    folder = one_notebook(tmp_path)
    assert run_series.main(["--notebooks-dir", str(folder), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a CSV file" in err and "not found" not in err


def csv_variant(tmp_path, name, encoding="utf-8", extra_column=None):
    """The synthetic sample re-saved: another encoding, or with one more column."""
    import helpers

    frame = helpers.load_raw(helpers.SAMPLE_DATA)
    if extra_column:
        frame[extra_column] = "1"
    path = tmp_path / name
    frame.to_csv(path, index=False, encoding=encoding)
    return path


@pytest.mark.parametrize("name, variant, message", [
    ("raw_row.csv", {"extra_column": "raw_row"}, "named raw_row, which cleaning adds"),
    ("utf16.csv", {"encoding": "utf-16"}, "UTF-16 text.*CSV UTF-8"),
])
def test_bad_files_with_real_helpers_exit_2(run_series, tmp_path, capsys, name, variant, message):
    folder = one_notebook(tmp_path)
    path = csv_variant(tmp_path, name, **variant)
    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(path),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err) and "unzip" not in err.lower()
    assert not (folder / "ran.txt").exists() and not (tmp_path / "out").exists()


def test_bad_seed_exits_2_with_the_notebooks_rule(run_series, tmp_path, csv_file, monkeypatch,
                                                  capsys):
    import helpers

    stub = stub_helpers(monkeypatch, tmp_path)
    stub.check_parameters = helpers.check_parameters
    stub.DataError = helpers.DataError
    folder = one_notebook(tmp_path)
    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--seed", "-1", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "error: Bad notebook parameter(s): SEED must be a whole number" in err
    assert not (tmp_path / "out").exists()


def test_jobs_reach_only_the_notebooks_that_declare_n_jobs(run_series, tmp_path):
    """--jobs (and --quick's default of one process) is passed as N_JOBS where the parameters
    cell declares it; papermill would otherwise inject an unknown parameter elsewhere."""
    plain = write_notebook(tmp_path, "01_plain", "x = 1")
    parallel = write_notebook(tmp_path, "04_parallel", "x = 1")
    nb = nbformat.read(parallel, as_version=4)
    nb.cells[1].source += "\nN_JOBS = 2"  # the parameters cell
    nbformat.write(nb, parallel)
    parameters = {"SEED": 42}
    assert run_series.with_jobs(plain, parameters, 1) == parameters
    assert run_series.with_jobs(parallel, parameters, 1) == {"SEED": 42, "N_JOBS": 1}
    assert run_series.with_jobs(parallel, parameters, None) == parameters
    assert run_series.with_jobs(parallel, {}, 1) == {}  # --refresh: the committed defaults


BAR_CELL = ("import sys, time\n"
            "from tqdm import tqdm\n"
            "from helpers import BAR_FORMAT\n"
            "print('a warning from the kernel', file=sys.stderr)\n"
            "for _ in tqdm(range(30), 'inner work', unit='steps', bar_format=BAR_FORMAT,\n"
            "              ncols=100):\n"
            "    time.sleep(0.02)")
FINAL_BAR = "inner work: 100%|██████████| 30/30 steps"


def test_a_cells_bar_reaches_the_console_and_the_notebook_as_one_line(run_series, tmp_path,
                                                                      csv_file, monkeypatch,
                                                                      capsys, folder):
    """A tqdm bar in a cell: off a terminal the console gets the bar's final line once
    (no \\r updates); the executed notebook keeps that line only; other kernel stderr stays
    in the notebook, as before."""
    stub_helpers(monkeypatch, tmp_path)
    write_notebook(folder, "01_bar", BAR_CELL)
    out = tmp_path / "out"

    code = run_series.main(["--notebooks-dir", str(folder), "--data", str(csv_file),
                            "--output", str(out)])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.count(FINAL_BAR) == 1
    assert re.findall(r"inner work: .*?(\d+)/30", printed.out + printed.err) == ["30"]
    assert "a warning from the kernel" not in printed.out + printed.err
    outputs = nbformat.read(out / "notebooks" / "01_bar.ipynb", as_version=4).cells[-1].outputs
    assert [(o.output_type, o.name, o.text) for o in outputs] == [
        ("stream", "stderr", f"a warning from the kernel\n{FINAL_BAR}\n")]


def test_on_a_terminal_the_bar_updates_one_line_under_the_notebooks(run_series, capsys):
    relay = run_series.BarRelay(live=True)
    relay.write("a warning\n\rgrid search:   0%|          | 0/4 fits")
    relay.write("\rgrid search:  50%|█████     | 2/4 fits\rgrid search:  75%|███████▌  | 3/4 fits")
    relay.write("\rgrid search: 100%|██████████| 4/4 fits")
    relay.write("\n")
    relay.close()
    printed = capsys.readouterr()
    assert "  grid search:  75%|███████▌  | 3/4 fits" in printed.err  # the live line
    assert "\x1b[A" in printed.err  # drawn below the notebook's bar, not over it
    assert printed.out == "  grid search: 100%|██████████| 4/4 fits\n"  # kept, once
    assert "warning" not in printed.out + printed.err
