"""spotify-predict (spotify_streams.commands.predict): predicted streams for a CSV of new
songs; refusals exit 2 naming every refused row, without a partial file."""

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from spotify_streams.commands import predict
from spotify_streams.config import SAMPLE_DATA
from spotify_streams.dataset import clean, load_raw
from spotify_streams.features import feature_columns, log_streams
from spotify_streams.modeling.baselines import make_baseline
from spotify_streams.modeling.predict import predict_streams, save_model
from spotify_streams.schema import NAME_COLUMNS, PLATFORM_COLUMNS


@pytest.fixture(scope="module")
def models(songs, tmp_path_factory):
    """A final model and a forecaster, saved as notebook 06 saves them (small stand-ins)."""
    folder = tmp_path_factory.mktemp("models")
    for name, fs in [("final", "full"), ("pre-release", "pre-release")]:
        model = make_baseline("hgb", fs, max_iter=5).fit(songs[feature_columns(fs)],
                                                         log_streams(songs))
        save_model(model, folder / name, fs, songs, np.linspace(-0.4, 0.4, 81))
    return folder

@pytest.fixture
def new_songs(tmp_path):
    """Eight rows of the sample as a user would bring them: no streams column."""
    raw = load_raw(SAMPLE_DATA)
    raw.loc[clean(raw).data["raw_row"].head(8)].drop(columns="streams").to_csv(
        path := tmp_path / "new.csv", index=False)
    return path

def test_one_row_per_input_row_with_an_interval_in_chunks(models, new_songs, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    out = tmp_path / "out.csv"
    code = predict.main([str(new_songs), "--model-dir", str(models / "final"), "--interval",
                         "0.8", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "predicting: 100%|██████████| 3/3 chunks" in err and "wrote 8 predictions" in err
    table = pd.read_csv(out)
    assert list(table.columns) == [*NAME_COLUMNS, "predicted", "lower", "upper"]
    assert len(table) == 8 and (table["lower"] < table["predicted"]).all()
    np.testing.assert_allclose(table["predicted"], predict_streams(
        load_raw(new_songs, target=False), models / "final"), rtol=1e-12)

def test_the_forecaster_at_an_age_needs_no_platform_counts(models, new_songs, tmp_path, capsys):
    pd.read_csv(new_songs).drop(columns=PLATFORM_COLUMNS).to_csv(
        rows := tmp_path / "unreleased.csv", index=False)
    code = predict.main([str(rows), "--inputs", "pre-release", "--model-dir",
                         str(models / "pre-release"), "--age-days", "30"])
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
    (lambda d: d, ["--model-dir", "no-such-model"], "No saved full"),
])
def test_bad_input_exits_2_before_predicting_and_writes_no_file(models, new_songs, tmp_path,
                                                                capsys, monkeypatch, edit, args,
                                                                message):
    """Rows are predicted in chunks but checked all at once first."""
    import re

    if "refused" in message:
        monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    edit(pd.read_csv(new_songs)).to_csv(bad := tmp_path / "bad.csv", index=False)
    out = tmp_path / "out.csv"
    code = predict.main([str(bad), "--model-dir", str(models / "final"), "-o", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err, re.S) and err.startswith("error: "), err
    assert not out.exists() and list(tmp_path.glob("*.partial*")) == []

def test_help_says_how_models_are_loaded():
    proc = subprocess.run([sys.executable, "-m", "spotify_streams.commands.predict", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "trusted types only, no unpickling" in proc.stdout
