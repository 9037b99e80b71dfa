"""scripts/predict.py: predicted streams for a CSV of new songs, refusals without a partial file."""

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import helpers

SCRIPT = helpers.ROOT / "scripts" / "predict.py"


@pytest.fixture(scope="module")
def predict():
    spec = importlib.util.spec_from_file_location("predict_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A final model and a forecaster, saved as notebook 06 saves them (small stand-ins)."""
    songs = helpers.add_features(helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data)
    folder = tmp_path_factory.mktemp("models")
    residuals = np.linspace(-0.4, 0.4, 81)
    for name, fs in [("final", "full"), ("pre-release", "pre-release")]:
        fitted = helpers.make_baseline("hgb", fs, seed=0).fit(songs[helpers.feature_columns(fs)],
                                                            helpers.log_streams(songs))
        helpers.save_model(fitted, folder / name, fs, songs, residuals)
    return folder


@pytest.fixture
def new_songs(tmp_path):
    """Eight rows of the sample as a user would bring them: no streams column."""
    raw = helpers.load_raw(helpers.SAMPLE_DATA)
    rows = raw.loc[helpers.clean(raw).data["raw_row"].head(8)].drop(columns="streams")
    path = tmp_path / "new.csv"
    rows.to_csv(path, index=False)
    return path


def test_predicts_one_row_per_input_row_with_an_interval(predict, models, new_songs, tmp_path,
                                                         capsys):
    out = tmp_path / "out.csv"
    code = predict.main([str(new_songs), "--model-dir", str(models / "final"), "--interval",
                         "0.8", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out)
    assert list(table.columns) == [*helpers.NAME_COLUMNS, "predicted", "lower", "upper"]
    assert len(table) == 8 and (table["lower"] < table["predicted"]).all()
    expected = helpers.predict_streams(helpers.load_raw(new_songs, target=False),
                                       models / "final")
    np.testing.assert_allclose(table["predicted"], expected, rtol=1e-12)
    assert "wrote 8 predictions" in capsys.readouterr().err


def test_the_forecaster_at_an_age_needs_no_platform_counts(predict, models, new_songs, tmp_path,
                                                           capsys):
    rows = pd.read_csv(new_songs).drop(columns=helpers.PLATFORM_COLUMNS)
    rows.to_csv(tmp_path / "unreleased.csv", index=False)
    code = predict.main([str(tmp_path / "unreleased.csv"), "--inputs", "pre-release",
                         "--model-dir", str(models / "pre-release"), "--age-days", "30"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = pd.read_csv(__import__("io").StringIO(printed.out))
    assert list(table.columns) == [*helpers.NAME_COLUMNS, "predicted"] and len(table) == 8


@pytest.mark.parametrize("edit, args, message", [
    (lambda d: d.assign(bpm="fast"), [], "row 0: bpm is not a number"),
    (lambda d: d.drop(columns="in_spotify_playlists"), [], "inputs='pre-release'"),
    (lambda d: d.assign(released_year=2099), [], "pass age_days="),
    (lambda d: d, ["--age-days", "-5"], "age_days=-5"),
    (lambda d: d, ["--interval", "80"], "interval=80"),
    (lambda d: d.iloc[:, :3], [], "lacks required column"),
])
def test_bad_input_stops_with_exit_code_2_and_no_file(predict, models, new_songs, tmp_path,
                                                      capsys, edit, args, message):
    bad = tmp_path / "bad.csv"
    edit(pd.read_csv(new_songs)).to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    code = predict.main([str(bad), "--model-dir", str(models / "final"), "-o", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("error: "), err
    assert not out.exists() and list(tmp_path.glob("*.partial*")) == []


def test_a_large_file_shows_progress_on_stderr(predict, models, new_songs, tmp_path, capsys,
                                               monkeypatch):
    monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    code = predict.main([str(new_songs), "--model-dir", str(models / "final"), "-o",
                         str(tmp_path / "out.csv")])
    assert code == 0
    assert "predicting: 100%|██████████| 3/3 chunks" in capsys.readouterr().err


def test_help_says_how_models_are_loaded():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "trusted types only, no unpickling" in proc.stdout


def test_every_refused_row_is_named_before_anything_is_predicted(predict, models, new_songs,
                                                                 tmp_path, capsys, monkeypatch):
    """Rows are predicted in chunks on large files, but checked all at once first: one
    message names the refused rows of every chunk."""
    monkeypatch.setattr(predict, "ROWS_PER_CHUNK", 3)
    bad = pd.read_csv(new_songs, dtype=str)
    bad.loc[[1, 7], "bpm"] = "fast"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code = predict.main([str(tmp_path / "bad.csv"), "--model-dir", str(models / "final")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 8 row(s) refused" in err
    assert "row 1: bpm is not a number" in err and "row 7: bpm is not a number" in err
