"""spotify-run on tiny notebooks: outputs, failures, refusals, --refresh, --jobs, bars."""

import json
import re
import signal
import subprocess
import sys
import time
from unittest import mock

import nbformat
import pytest

from spotify_streams import config
from spotify_streams.commands import run_series
from spotify_streams.config import ROOT, SAMPLE_DATA

PARAMETERS = "DATA_PATH = None\nOUTPUT_DIR = None\nSEED = 42\nQUICK = False"


def write_notebook(folder, name, *sources, jobs=False):
    """The series' parameters cell (with N_JOBS = 2 if jobs), then `sources` (code, or cells)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), nbformat.v4.new_code_cell(
        PARAMETERS + "\nN_JOBS = 2" * jobs, metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(s) if isinstance(s, str) else s for s in sources]]
    nbformat.write(nb, path := folder / f"{name}.ipynb")
    return path


@pytest.fixture
def folder(tmp_path):
    """A folder for a test's notebooks."""
    (path := tmp_path / "nbs").mkdir()
    return path


def main(folder, *args, data=SAMPLE_DATA):
    return run_series.main(["--notebooks-dir", str(folder), *(["--data", str(data)] if data else
                                                              []), *map(str, args)])


BAR_CELL = ("import sys, time\nfrom tqdm import tqdm\nfrom spotify_streams.parallel import "
            "BAR_FORMAT\nprint('a warning from the kernel', file=sys.stderr)\nfor _ in tqdm("
            "range(30), 'inner work', unit='steps', bar_format=BAR_FORMAT, ncols=100):\n"
            "    time.sleep(0.02)")
FINAL_BAR = "inner work: 100%|██████████| 30/30 steps"


def test_success_writes_notebooks_report_status_summary_and_one_bar_line(tmp_path, capsys, folder):
    """The parameters reach the notebooks (N_JOBS where declared); off a terminal a bar reaches
    the console once, its final line, kept in the notebook."""
    write_notebook(folder, "01_first", "print(SEED, QUICK, N_JOBS)", jobs=True)
    write_notebook(folder, "02_skipped", "pass")
    write_notebook(folder, "03_bar", BAR_CELL)
    write_notebook(folder, "06_results", "pass")
    out = tmp_path / "out"
    (out / "metrics").mkdir(parents=True)  # 06's metrics, as if it ran
    row = dict(model="ridge", feature_set="full", r2=0.51, r2_low=0.4, r2_high=0.6, median_factor=2)
    (out / "metrics" / "06_results.json").write_text(json.dumps({"headline": [row],
                                                                "final_model": "ridge"}))
    assert main(folder, "--output", out, "--seed", 7, "--quick", "--only", "1,3,6") == 0
    printed, err = capsys.readouterr()
    executed = nbformat.read(out / "notebooks" / "01_first.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0].text == "7 True 1\n"  # --quick: N_JOBS 1
    html = (out / "report.html").read_text()
    assert "01_first" in html and "06_results" in html and "02_skipped" not in html
    assert "[1/3] 01_first" in printed and "[3/3] 06_results" in printed
    assert printed.count(FINAL_BAR) == 1 and "a warning from the kernel" not in printed + err
    assert re.findall(r"inner work: .*?(\d+)/30", printed + err) == ["30"]
    bar = nbformat.read(out / "notebooks" / "03_bar.ipynb", as_version=4)
    assert "N_JOBS" not in json.dumps(bar.cells)  # not declared: not passed
    assert [(o.output_type, o.name, o.text) for o in bar.cells[-1].outputs] == [
        ("stream", "stderr", f"a warning from the kernel\n{FINAL_BAR}\n")]
    assert re.search(r"^Test set .*\n.*\nTest R² .*:\n\nmodel +full +typical error \(full set\)\n"
                     r"ridge +0\.510 \[0\.40, 0\.60\] +×2\.00\n", printed, re.M), printed  # aligned
    assert "Final model (chosen in cross-validation): ridge on the full features, test R² " \
        "0.510 [0.40, 0.60]" in printed
    assert (out / "report.html").resolve().as_uri() in printed  # a link a terminal can open
    assert printed.count("SYNTHETIC") == 2 and "kaggle datasets download" in printed
    done = ["01_first", "03_bar", "06_results"]
    assert sorted(p.stem for p in (out / "notebooks").iterdir()) == done  # no temp or .failed
    status = json.loads((out / "RUN_STATUS.json").read_text())
    assert status["status"] == "complete" and status["notebooks_done"] == done
    assert main(folder, "--output", tmp_path / "out2", "--only", "1") == 0
    assert "no headline metrics (06 not run)" in capsys.readouterr().out
    executed = nbformat.read(tmp_path / "out2" / "notebooks" / "01_first.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0].text == "42 False 2\n"  # the notebook's own N_JOBS


def test_failing_notebook_exits_1_and_keeps_previous_output(tmp_path, capsys, folder):
    write_notebook(folder, "01_first", "x = 1")
    write_notebook(folder, "02_boom", "y = 2", "# fit the model\nraise ValueError('boom 42')")
    write_notebook(folder, "03_later", "z = 3")
    (out := tmp_path / "out" / "notebooks").mkdir(parents=True)
    (out / "02_boom.ipynb").write_text("output of an earlier successful run")
    assert main(folder, "--output", out.parent) == 1
    err = capsys.readouterr().err
    assert "FAILED 02_boom" in err and "ValueError: boom 42" in err and "incomplete" in err
    assert "# fit the model" in err and "cell " in err
    assert (out / "02_boom.ipynb").read_text() == "output of an earlier successful run"
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb", "02_boom.failed.ipynb",
                                                     "02_boom.ipynb"]  # no hidden temp file
    assert not (out.parent / "report.html").exists()
    status = json.loads((out.parent / "RUN_STATUS.json").read_text())  # the mix is marked
    assert status["status"] == "failed" and status["notebooks_done"] == ["01_first"]
    assert "02_boom failed" in status["meaning"] and "earlier run" in status["meaning"]


def test_sigterm_leaves_no_hidden_files_and_marks_the_run(tmp_path, folder):
    """SIGTERM (a CI timeout): the partial notebook kept as NN.failed.ipynb, the run marked."""
    write_notebook(folder, "01_slow", "import time\nopen('started', 'w').close()\ntime.sleep(60)")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spotify_streams.commands.run_series",
                             "--notebooks-dir", folder, "--data", SAMPLE_DATA, "--output", out],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (folder / "started").exists():  # the kernel is running the sleeping cell
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted during 01_slow" in err, err
    assert "running over TCP" not in err  # the kernel's start-up warning is silenced
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["01_slow.failed.ipynb"]
    assert json.loads((out / "RUN_STATUS.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("args, message", [  # one case per way the runner refuses
    (["--data", "no.csv"], "data file not found"), (["--data", "."], "is a folder, not a CSV file"),
    (["--data", "report.txt"], "does not look like the Spotify"), (["--only", "09"], "numbered 09"),
    (["--seed", "-1"], r"error: Bad notebook parameter\(s\): SEED must be a whole number"),
    (["--output", "report.txt"], "--output .*report.txt"), (["--refresh"], "real data.*kaggle"),
    (["--output", "unwritable"], "cannot write to --output .*Permission denied")])
def test_bad_usage_exits_2_with_one_error_line(tmp_path, capsys, folder, monkeypatch, args,
                                               message):
    """Refused before any notebook runs, the files named left as they were."""
    write_notebook(folder, "01_marker", "open('ran.txt', 'w').write('ran')")  # if it runs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.txt").write_text("keep me")
    monkeypatch.setattr(run_series, "RAW_DATA", tmp_path / "absent.csv", raising=False)  # bound
    if "cannot write" in message:  # root ignores chmod
        monkeypatch.setattr(run_series.tempfile, "TemporaryFile",
                            mock.Mock(side_effect=PermissionError(13, "Permission denied")))
    data = None if args[0] in ("--data", "--refresh") else SAMPLE_DATA
    assert main(folder, *args, data=data) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err) and "Traceback" not in err, err
    assert "not found" not in err or "folder" not in message
    assert (tmp_path / "report.txt").read_text() == "keep me"
    assert not (folder / "ran.txt").exists()  # the marker notebook did not run


def test_refresh_executes_in_place_without_parameters_and_hides_raw_rows(tmp_path, capsys,
                                                                         monkeypatch, folder):
    real = tmp_path / "spotify-2023.csv"
    real.write_bytes(SAMPLE_DATA.read_bytes())  # stands in for the real file
    for name, value in [("RAW_DATA", real), ("REAL_SHA256", config.file_sha256(real))]:
        monkeypatch.setattr(config, name, value)
        monkeypatch.setattr(run_series, name, value, raising=False)  # its own name, if bound
    notebook = write_notebook(folder, "01_committed", "print('data is', DATA_PATH)",
                              nbformat.v4.new_code_cell("print('Some Song | Some Artist | 1234')",
                                                        metadata={"tags": ["raw-rows"]}), jobs=True)
    assert main(folder, "--refresh", "--jobs", 3, "--output", tmp_path / "out", data=None) == 0, \
        capsys.readouterr().err
    nb = nbformat.read(notebook, as_version=4)
    assert len(nb.cells) == 4  # no injected-parameters cell, not even for --jobs
    assert "data is None" in json.dumps(nb.cells[-2].outputs)
    assert "papermill" not in nb.metadata and "papermill" not in nb.cells[-2].metadata
    raw_rows = json.dumps(nb.cells[-1].outputs)  # a cell showing rows of the data file
    assert "Some Song" not in raw_rows and "left out of the committed notebook" in raw_rows
    assert sorted(p.name for p in folder.iterdir()) == ["01_committed.ipynb"]


def test_on_a_terminal_the_bar_updates_one_line_under_the_notebooks(capsys):
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
