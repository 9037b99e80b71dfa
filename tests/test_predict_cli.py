"""spotify-predict: streams for a CSV of new songs; refusals exit 2 naming every refused row."""

import io
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from spotify_streams.commands import predict
from spotify_streams.dataset import load_raw
from spotify_streams.modeling.predict import predict_streams
from spotify_streams.schema import NAME_COLUMNS, PLATFORM_COLUMNS


def test_one_row_per_input_row_in_chunks_with_an_interval_or_at_an_age(
        saved_models, new_songs, tmp_path, capsys, monkeypatch):
    """The forecaster (--inputs pre-release, at an age) needs no platform counts."""
    monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    rows = load_raw(new_songs, target=False)
    code = predict.main([str(new_songs), "--model-dir", str(saved_models / "final"),
                         "--interval", "0.8", "-o", str(out := tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "predicting: 100%|██████████| 3/3 chunks" in err and "wrote 8 predictions" in err
    table = pd.read_csv(out)
    assert list(table.columns) == [*NAME_COLUMNS, "predicted", "lower", "upper"]
    np.testing.assert_allclose(table.iloc[:, -3:], predict_streams(
        rows, saved_models / "final", interval=0.8), rtol=1e-12)
    rows.drop(columns=PLATFORM_COLUMNS).to_csv(unreleased := tmp_path / "later.csv", index=False)
    code = predict.main([str(unreleased), "--inputs", "pre-release", "--model-dir",
                         str(saved_models / "pre-release"), "--age-days", "30"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = pd.read_csv(io.StringIO(printed.out))
    assert list(table.columns) == [*NAME_COLUMNS, "predicted"]
    np.testing.assert_allclose(table["predicted"], predict_streams(
        rows, saved_models / "pre-release", "pre-release", age_days=30), rtol=1e-12)


@pytest.mark.parametrize("edit, args, message", [
    (lambda d: d.assign(bpm=["fast", *[120] * 6, "slow"]), [], r"2 of 8 row\(s\).*row 0.*row 7"),
    (lambda d: d, ["--interval", "80"], "interval=80"),  # a ValueError
    (lambda d: d, ["--model-dir", "no-such-model"], "No saved full")])  # a MissingStepError
def test_bad_input_exits_2_before_predicting_and_writes_no_file(
        saved_models, new_songs, tmp_path, capsys, monkeypatch, edit, args, message):
    """Rows are predicted in chunks of 3 here but checked all at once first."""
    monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    edit(pd.read_csv(new_songs)).to_csv(bad := tmp_path / "bad.csv", index=False)
    code = predict.main([str(bad), "--model-dir", str(saved_models / "final"), "-o",
                         str(out := tmp_path / "out.csv"), *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err, re.S) and err.startswith("error: "), err
    assert "Traceback" not in err and not out.exists() and list(tmp_path.glob("*.partial*")) == []


def test_help_says_how_models_are_loaded():
    proc = subprocess.run([sys.executable, "-m", "spotify_streams.commands.predict", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "trusted types only, no unpickling" in proc.stdout
