"""Features, splits and the evidence rule (known numbers), the baselines, saved models and
predictions for new songs."""

import json

import numpy as np
import pandas as pd
import pytest

from spotify_streams import contract
from spotify_streams import evaluation as ev
from spotify_streams import features as ft
from spotify_streams.config import SAMPLE_DATA
from spotify_streams.dataset import clean, load_raw, pair_key
from spotify_streams.errors import DataError, MissingStepError, UntrustedModelError
from spotify_streams.modeling import predict
from spotify_streams.modeling.baselines import make_baseline
from spotify_streams.modeling.network import make_mlp
from spotify_streams.modeling.predict import load_model, predict_streams, save_model
from spotify_streams.modeling.selection import cheapest_within, grid_param
from spotify_streams.schema import PLATFORM_COLUMNS
from spotify_streams.search_spaces import ORIGINAL_GRID

TINY = {"neurons": 4, "batch_size": 64, "epochs": 1}  # a network that only has to exist
RESIDUALS = np.linspace(-0.5, 0.5, 101)  # a stand-in for cross-validated residuals (log10)
NEXT_YEAR = str(pd.Timestamp.today().year + 1)

def fitted(songs, name="linear", feature_set="full", **params):
    model = make_mlp(feature_set, seed=1, **TINY) if name == "mlp" else make_baseline(
        name, feature_set, seed=1, **params)
    return model.fit(songs[ft.feature_columns(feature_set)], ft.log_streams(songs))

@pytest.fixture(scope="module")
def linear_model(songs, tmp_path_factory):
    """A quick stand-in for the saved network (same save_model, same checks of new rows)."""
    return save_model(fitted(songs), tmp_path_factory.mktemp("linear"), "full", songs, RESIDUALS)

@pytest.mark.parametrize("feature_set", list(ft.FEATURE_SETS))
def test_the_preprocessors_columns_depend_on_the_feature_set_only(songs, feature_set):
    """preprocessed_columns (which make_baseline's monotone constraint indexes) names what the
    fitted preprocessor outputs, on all songs and on a few without a missing value."""
    columns = ft.feature_columns(feature_set)
    for rows in (songs, songs[songs["in_shazam_charts"].notna()].head(5)):
        prep = ft.make_preprocessor(feature_set).fit(rows[columns])
        assert list(prep.get_feature_names_out()) == ft.preprocessed_columns(feature_set)
        assert prep.transform(rows[columns]).shape[1] == len(ft.preprocessed_columns(feature_set))

def test_feature_sets_weekday_and_the_preprocessor(songs):
    audio, pre, full = (set(ft.feature_columns(s)) for s in ["audio", "pre-release", "full"])
    assert audio < pre < full and not set(PLATFORM_COLUMNS) & pre
    with pytest.raises(ValueError, match="Unknown feature set 'sound'"):
        ft.feature_columns("sound")
    first = songs.iloc[0]  # the sample's first song: Friday 1957-06-28
    assert (str(first["release_date"].date()), first["release_weekday"]) == ("1957-06-28", "Fri")
    prep = ft.make_preprocessor("full").fit(songs[ft.feature_columns("full")])
    X, names = prep.transform(songs[ft.feature_columns("full")]), list(prep.get_feature_names_out())
    assert "missingindicator_in_shazam_charts" in names and not np.isnan(X).any()
    scaled = X[:, names.index("in_spotify_playlists")]
    assert abs(scaled.mean()) < 1e-9 and abs(scaled.std() - 1) < 1e-9

def test_logs_are_exact_and_the_same_on_every_cpu():
    """Correctly rounded logarithms (known values), and a process with numpy's SIMD kernels
    held below this CPU's level computes the same bytes."""
    import os
    import subprocess
    import sys

    assert ft.exact_log([1e8, 2.0, 123456789.0]).tolist() == [8.0, 0.3010299956639812,
                                                           8.09151497716927]
    assert ft.exact_log([[0.0, 1.0]], base10=False).tolist() == [[0.0, 0.6931471805599453]]
    assert np.isnan(ft.exact_log([np.nan])).all()
    below = (contract.numpy_levels(contract.simd_extensions()) or [(None, "")])[0][1]
    code = ("import hashlib; from spotify_streams import config, dataset as d, features as f; "
            "s = f.add_features(d.clean(d.load_raw(config.SAMPLE_DATA)).data); X = f.make_prepro"
            "cessor('full').fit_transform(s[f.feature_columns('full')]); print(hashlib.sha256("
            "f.log_streams(s).tobytes() + X.tobytes()).hexdigest())")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NPY_DISABLE_CPU_FEATURES": level})
           for level in ("", below)]
    assert out[0].returncode == out[1].returncode == 0, out[0].stderr + out[1].stderr
    assert out[0].stdout == out[1].stdout

def test_split_keeps_each_artist_on_one_side_and_stays_put(songs):
    """A stable hash of the first artist: removing, editing or reordering songs moves no
    other song; the seed does."""
    frame = pd.DataFrame({"artist(s)_name": ["Bad Bunny", "bad bunny, Drake", " Drake,Bad Bunny"]})
    assert ev.artist_key(frame).tolist() == ["badbunny", "badbunny", "drake"]
    data = pd.concat([songs, songs.iloc[[0]].assign(streams=1)], ignore_index=True)  # a twin
    train, test = ev.split_train_test(data, seed=3)
    assert not set(ev.artist_key(train)) & set(ev.artist_key(test))
    assert not set(pair_key(train)) & set(pair_key(test)) and len(train) + len(test) == len(data)

    def held_out(frame, seed=5):
        return set(ev.split_train_test(frame, seed=seed)[1]["raw_row"])

    before = held_out(songs)
    assert held_out(songs.drop(index=songs.index[7])) == before - {songs["raw_row"].iloc[7]}
    edited = songs.copy()
    edited.loc[edited.index[3], "bpm"] += 1
    assert held_out(edited) == before == held_out(songs.sample(frac=1, random_state=0))
    assert held_out(songs, seed=6) != before

def test_cv_splits_cover_every_row_once_per_repeat_by_whole_artists(songs):
    splits = ev.cv_splits(songs, seed=0, n_splits=5, n_repeats=2)
    assert len(splits) == 10 and not np.array_equal(splits[0][1], splits[5][1])  # reshuffled
    for r in range(2):
        assert sorted(np.concatenate([va for _, va in splits[5 * r:5 * r + 5]])) == list(
            range(len(songs)))
    for tr, va in splits:
        assert not set(ev.artist_key(songs.iloc[tr])) & set(ev.artist_key(songs.iloc[va]))

def test_the_scoring_dict_reports_errors_as_positive_numbers():
    """A model predicting 1, 2.3, 4 for 1, 2, 3 (log10): errors 0, 0.3, 1."""
    from sklearn.base import BaseEstimator

    class Fixed(BaseEstimator):
        def predict(self, X):
            return np.array([1.0, 2.3, 4.0])

    scores = {name: scorer(Fixed(), None, np.array([1.0, 2.0, 3.0]))
              for name, scorer in ev.scoring().items() if name != "r2"}
    assert scores == pytest.approx({"mse": 1.09 / 3, "mae": 1.3 / 3, "median_factor": 1.9952623})
    assert ev.scoring()["r2"] == "r2"  # 10^0.3 above: the typical prediction is off by × 2

def test_paired_difference_is_the_corrected_resampled_t_test():
    """Differences 0.1, 0, 0.2, 0.3 over 4 folds of 2 validation rows to 8 training rows:
    s² = 0.05/3, SE = √((1/4 + 2/8)·s²) = 0.0913 (not s/√4 = 0.0645), t = 1.643 on 3 df."""
    splits = [(np.arange(8), np.arange(8, 10))] * 4
    out = ev.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.5], splits)
    assert out == pytest.approx({"difference": 0.15, "se": 0.0912871, "ci_low": -0.1405163,
                                 "ci_high": 0.4405163, "t": 1.6431677, "p_value": 0.1988922,
                                 "folds_won": "3 of 4"})  # a tie is not a win
    one = ev.paired_difference([0.5], [0.4], splits)
    assert np.isnan(one["se"]) and np.isnan(one["p_value"])  # one fold: no evidence either way

@pytest.mark.parametrize("p, passed", [
    ([0.01, 0.04, 0.03], [True, False, False]),  # 0.01 ≤ 0.05/3; then 0.03 > 0.05/2: stop
    ([0.001, 0.02, 0.04], [True, True, True]),  # 0.02 ≤ 0.025, 0.04 ≤ 0.05
    ([0.03, 0.001, float("nan")], [False, True, False]), ([], []),
])
def test_holm_steps_down_through_the_family(p, passed):
    assert ev.holm(p).tolist() == passed

def test_r2_interval_resamples_groups_and_matches_r2_score():
    """Resampling artists (songs in groups of 4 that share their error) gives a wider interval
    than resampling songs; one resample's R² is r2_score's weighted R²."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 4)
    y = rng.normal(size=200) + np.repeat(rng.normal(size=50), 4)
    pred = y + np.repeat(rng.normal(scale=0.8, size=50), 4)
    songs = ev.r2_interval(y, pred, seed=1)
    artists = ev.r2_interval(y, pred, groups=groups, seed=1)
    assert songs[0] < r2_score(y, pred) < songs[1] and artists[0] < r2_score(y, pred) < artists[1]
    assert artists[1] - artists[0] > 1.3 * (songs[1] - songs[0])
    assert ev.r2_interval(y, pred, groups=groups, seed=1) == artists  # seeded
    weights = rng.integers(0, 3, size=200)  # what one resample of songs computes
    drawn = np.repeat(np.arange(200), weights)
    low, high = ev.r2_interval(y[drawn], pred[drawn], n_resamples=100, level=0.0001)
    assert r2_score(y, pred, sample_weight=weights) == pytest.approx((low + high) / 2, abs=0.05)
    assert ev.r2_interval(y, pred, groups=groups, minus=pred, seed=1) == (0.0, 0.0)  # vs itself

def test_baseline_knobs_are_set_by_name_and_searchable(songs):
    """Notebook 05 searches f"{name}__knob", 06 builds the tuned model from saved values."""
    from sklearn.base import clone

    forest = make_baseline("rf", "full", seed=3, max_depth=4).named_steps["rf"]
    assert (forest.max_depth, forest.random_state, forest.n_estimators) == (4, 3, 100)
    searched = clone(make_baseline("hgb", "full")).set_params(hgb__max_depth=3)
    assert searched.named_steps["hgb"].max_depth == 3
    shallow = fitted(songs, "rf", max_depth=1, n_estimators=3)
    assert max(t.get_depth() for t in shallow.named_steps["rf"].estimators_) == 1
    with pytest.raises(ValueError, match="max_dept"):
        make_baseline("hgb", "full", max_dept=3)  # a typo is an error, not ignored
    with pytest.raises(ValueError, match="Unknown baseline 'forest'"):
        make_baseline("forest", "full")

def test_ensemble_fold_predictions_are_what_voting_regressor_predicts(songs):
    """Notebook 06 scores the ensemble in CV as the mean of its members' held-out predictions
    instead of refitting them inside a VotingRegressor: the two must agree exactly."""
    from sklearn.ensemble import VotingRegressor

    (tr, va), = ev.cv_splits(songs, seed=0, n_repeats=1)[:1]
    X, y = songs[ft.feature_columns("full")], ft.log_streams(songs)
    members = [("mlp", make_mlp("full", seed=3, **TINY)),
               ("hgb", make_baseline("hgb", "full", seed=3, max_iter=5))]
    held_out = [m.fit(X.iloc[tr], y[tr]).predict(X.iloc[va]) for _, m in members]
    voting = VotingRegressor(members).fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    np.testing.assert_array_equal((held_out[0] + held_out[1]) / 2, voting)

def test_cheapest_within_ignores_differences_below_the_tie_margin():
    """The best by 0.0003 R² loses to a cheaper configuration within the margin; a cheaper one
    outside the margin does not win; equal cost goes to the better score."""
    rows = [(0.001, 0.2, 128, 16, 100, 0.7967),   # best
            (0.001, 0.3, 128, 32, 100, 0.7964),   # runner-up, half the steps
            (0.001, 0.2, 128, 32, 50, 0.7926),    # within 0.01, cheapest
            (0.001, 0.3, 128, 32, 50, 0.7897),    # same cost, lower score
            (0.01, 0.2, 64, 32, 50, 0.7763)]      # cheaper still, but 0.02 below the best
    results = {"mean_test_score": np.array([r[-1] for r in rows]),
               **{f"param_{grid_param(k)}": np.array([r[i] for r in rows])
                  for i, k in enumerate(ORIGINAL_GRID)}}
    assert [cheapest_within(tie)(results) for tie in (0.01, 0.0, 0.001)] == [2, 0, 1]

@pytest.mark.parametrize("kind", ["mean", "linear", "hgb", "rf", "mlp", "ensemble"])
def test_saved_models_hold_only_the_types_the_series_trusts(songs, tmp_path, kind):
    """Each kind of model notebook 06 may save loads with skops.io trusting only SAVED_TYPES (a
    library release that renames a type fails here, naming it), and predicts as before."""
    import skops.io
    from sklearn.ensemble import VotingRegressor

    X, y = songs[ft.feature_columns("full")], ft.log_streams(songs)
    small = {"rf": {"n_estimators": 3}, "hgb": {"max_iter": 5}}.get(kind, {})
    model = (VotingRegressor([("mlp", make_mlp("full", seed=1, **TINY)), ("hgb", make_baseline(
        "hgb", "full", max_iter=5))]).fit(X, y) if kind == "ensemble" else fitted(
        songs, kind, **small))
    folder = save_model(model, tmp_path, "full", songs, RESIDUALS)
    found = set(skops.io.get_untrusted_types(file=folder / "model.skops"))
    assert found <= predict.SAVED_TYPES, f"types to review: {found - predict.SAVED_TYPES}"
    np.testing.assert_array_equal(load_model(folder).predict(X[:5]), model.predict(X[:5]))
    if kind == "mlp":
        info = json.loads((folder / "model.json").read_text())
        assert info == {"feature_set": "full", "model": "mlp", "blank_key": "C", "quick": False,
                        "reference_date": "2023-06-20", "residuals": RESIDUALS.round(6).tolist()}

def test_a_model_file_with_other_types_is_refused(songs, linear_model, monkeypatch):
    monkeypatch.setattr(predict, "SAVED_TYPES", set())  # as if the file held unknown types
    with pytest.raises(UntrustedModelError, match="holds types the series never saves.*exact_log"):
        predict_streams(songs.head(2), linear_model)

def test_predict_streams_reads_raw_text_rows_as_training_did(tmp_path, linear_model):
    """The README's way: load_raw(..., target=False) on new songs (text, separators, blanks);
    a blank key is what clean() made of blanks (here C); a blank in_shazam_charts is imputed."""
    raw = load_raw(SAMPLE_DATA)
    raw.loc[clean(raw).data["raw_row"].head(8)].drop(columns="streams").to_csv(
        tmp_path / "new.csv", index=False)
    rows = load_raw(tmp_path / "new.csv", target=False)
    predicted = predict_streams(rows, linear_model)
    assert predicted.index.equals(rows.index) and np.isfinite(predicted).all()
    pd.testing.assert_series_equal(predict_streams(rows.assign(key=None), linear_model),
                                   predict_streams(rows.assign(key="C"), linear_model))
    assert (predict_streams(rows.assign(in_shazam_charts=None), linear_model) > 0).all()

@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["bpm"]), "lack column.*bpm"),
    (lambda d: d.assign(bpm="fast"), r"bpm is not a number \('fast'\)"),
    (lambda d: d.assign(released_month=13), "impossible release date"),
    (lambda d: d.assign(key="H"), r"key is not a key \('H'\)"),
    (lambda d: d.assign(key="Db"), r"key is not a key \('Db'\)"),
    (lambda d: d.assign(mode="major"), r"mode is not Major or Minor \('major'\)"),
    (lambda d: d.assign(mode=None), "mode is missing"),
    (lambda d: d.assign(bpm=1e9), r"bpm outside 20–400 or not whole \('1000000000.0'\)"),
    (lambda d: d.assign(**{"danceability_%": 1e6}), "danceability_% outside 0–100"),
    (lambda d: d.assign(in_spotify_playlists=-1), r"in_spotify_playlists below 0 .*'-1'"),
    (lambda d: d.assign(in_spotify_playlists="inf"), r"in_spotify_playlists is not a number"),
    (lambda d: d.assign(released_year=1930), "release year before 1940"),
    (lambda d: d.iloc[:0], "non-empty"),
])
def test_predict_streams_refuses_what_clean_refuses(songs, linear_model, change, message):
    with pytest.raises(DataError, match=message):
        predict_streams(change(songs.head(3)), linear_model)

def test_predict_streams_names_each_refused_row_and_why(songs, linear_model):
    rows = songs.head(4).astype({"key": "str", "bpm": "float"}).set_axis(list("abcd"))
    rows.loc["a", "key"], rows.loc["c", "bpm"], rows.loc["c", "mode"] = "H", 1e9, None
    with pytest.raises(DataError) as refused:
        predict_streams(rows, linear_model)
    text = str(refused.value)
    assert text.startswith("2 of 4 row(s) refused") and "Traceback" not in text
    assert "row a: key is not a key ('H')" in text
    assert "row c: mode is missing; bpm outside 20–400" in text
    assert "row b" not in text and "row d" not in text

def test_song_age_comes_from_the_reference_date_or_age_days(songs, linear_model):
    """A release after the reference date (2023-06-20) is refused, naming the row and
    age_days; with age_days every row gets that age."""
    rows = songs.head(3).assign(released_year=[2024, 2022, int(NEXT_YEAR)])
    with pytest.raises(DataError, match="(?s)2 of 3 row.*row 0: released after the model's "
                                        "reference date 2023-06-20.*age_days"):
        predict_streams(rows, linear_model)
    for wrong in [-1, 2.5, "30", True]:
        with pytest.raises(ValueError, match="age_days"):
            predict_streams(rows, linear_model, age_days=wrong)
    new_year = songs.head(5).assign(released_year=2023, released_month=1, released_day=1)
    np.testing.assert_allclose(predict_streams(new_year, linear_model, age_days=170),  # days
                               predict_streams(new_year, linear_model))  # to 2023-06-20

def test_the_forecaster_needs_no_platform_counts_and_never_falls_with_age(songs, tmp_path,
                                                                         linear_model):
    """The full model names its feature set and points to the forecaster; gradient boosting is
    monotone in song age: over 100 songs and 8 ages up to 20 years, no prediction falls."""
    model = fitted(songs, "hgb", "pre-release", max_depth=3, max_iter=20)
    folder = save_model(model, tmp_path / "f", "pre-release", songs, RESIDUALS)
    rows = songs.head(100).drop(columns=PLATFORM_COLUMNS)
    with pytest.raises(DataError, match="'full' feature set.*inputs='pre-release'"):
        predict_streams(rows, linear_model)
    ages = [0, 7, 90, 365, 730, 2922, 5000, 7305]
    grid = np.column_stack([predict_streams(rows, folder, "pre-release", a) for a in ages])
    assert (np.diff(grid, axis=1) >= 0).all() and (grid[:, -1] > grid[:, 0]).mean() > 0.5
    with pytest.raises(ValueError, match="choose 'full' or 'pre-release'"):
        predict_streams(rows, inputs="playlists")

def test_prediction_intervals_come_from_the_residuals(songs, linear_model):
    """101 residuals -0.5, -0.49, ..., 0.5; interval=0.8: the 10th (-0.41) and the 92nd (0.41)
    order statistics (split-conformal); wider at 0.95; a bad level is named."""
    rows = songs.head(4)
    out = predict_streams(rows, linear_model, interval=0.8)
    assert list(out.columns) == ["predicted", "lower", "upper"] and out.index.equals(rows.index)
    np.testing.assert_allclose(np.log10(out["upper"] / out["predicted"]), 0.41)
    np.testing.assert_allclose(np.log10(out["lower"] / out["predicted"]), -0.41)
    wide = predict_streams(rows, linear_model, interval=0.95)
    assert (wide["upper"] > out["upper"]).all() and (wide["lower"] < out["lower"]).all()
    pd.testing.assert_series_equal(predict_streams(rows, linear_model), out["predicted"])
    with pytest.raises(ValueError, match="interval=80"):
        predict_streams(rows, linear_model, interval=80)

def test_without_a_model_and_a_quick_model_is_never_the_default(tmp_path, songs, monkeypatch):
    """`make quick` leaves a smoke-run model behind: not picked up silently (MissingStepError,
    a FileNotFoundError); asked for by folder, it is used."""
    folder = save_model(fitted(songs), tmp_path / "run" / "models" / "final", "full", songs,
                        RESIDUALS, quick=True)
    monkeypatch.setattr(predict, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(predict, "resolve_run",
                        lambda *a: type("R", (), {"models_dir": tmp_path / "none"})())
    with pytest.raises(MissingStepError, match="No saved full \\(non-QUICK\\) model.*06_results"):
        predict_streams(songs.head(2))
    assert len(predict_streams(songs.head(2), folder)) == 2
    with pytest.raises(FileNotFoundError, match="No saved full"):
        predict_streams(songs.head(1), tmp_path)
