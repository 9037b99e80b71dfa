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
    code = predict.main([str(new_songs), "--model-dir", str(saved_models / "final"),
                         "--interval", "0.8", "-o", str(out := tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "predicting: 100%|██████████| 3/3 chunks" in err and "wrote 8 predictions" in err
    table = pd.read_csv(out)
    assert list(table.columns) == [*NAME_COLUMNS, "predicted", "lower", "upper"]
    assert len(table) == 8 and (table["lower"] < table["predicted"]).all()
    np.testing.assert_allclose(table["predicted"], predict_streams(
        load_raw(new_songs, target=False), saved_models / "final"), rtol=1e-12)
    pd.read_csv(new_songs).drop(columns=PLATFORM_COLUMNS).to_csv(
        rows := tmp_path / "unreleased.csv", index=False)
    code = predict.main([str(rows), "--inputs", "pre-release", "--model-dir",
                         str(saved_models / "pre-release"), "--age-days", "30"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = pd.read_csv(io.StringIO(printed.out))
    assert list(table.columns) == [*NAME_COLUMNS, "predicted"] and len(table) == 8


@pytest.mark.parametrize("edit, args, message", [
    (lambda d: d.assign(bpm=["fast", 120, 120, 120, 120, 120, 120, "slow"]), [],
     r"2 of 8 row\(s\) refused.*row 0: bpm is not a number.*row 7: bpm is not a number"),
    (lambda d: d.drop(columns="in_spotify_playlists"), [], "inputs='pre-release'"),
    (lambda d: d.assign(released_year=2099), [], "pass age_days="),
    (lambda d: d, ["--age-days", "-5"], "age_days=-5"),
    (lambda d: d, ["--interval", "80"], "interval=80"),
    (lambda d: d.iloc[:, :3], [], "lacks required column"),
    (lambda d: d, ["--model-dir", "no-such-model"], "No saved full")])
def test_bad_input_exits_2_before_predicting_and_writes_no_file(
        saved_models, new_songs, tmp_path, capsys, monkeypatch, edit, args, message):
    """Rows are predicted in chunks but checked all at once first."""
    if "refused" in message:
        monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    edit(pd.read_csv(new_songs)).to_csv(bad := tmp_path / "bad.csv", index=False)
    code = predict.main([str(bad), "--model-dir", str(saved_models / "final"), "-o",
                         str(out := tmp_path / "out.csv"), *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err, re.S) and err.startswith("error: "), err
    assert not out.exists() and list(tmp_path.glob("*.partial*")) == []


def test_help_says_how_models_are_loaded():
    proc = subprocess.run([sys.executable, "-m", "spotify_streams.commands.predict", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "trusted types only, no unpickling" in proc.stdout
