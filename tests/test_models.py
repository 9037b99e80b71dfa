"""Features, splits, the evidence rule, baselines, saved models, predictions for new songs."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import clone
from sklearn.ensemble import VotingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from conftest import conformal, save_fitted
from spotify_streams import contract
from spotify_streams import evaluation as ev
from spotify_streams import features as ft
from spotify_streams.dataset import load_raw, pair_key
from spotify_streams.errors import DataError, MissingStepError, UntrustedModelError
from spotify_streams.modeling import predict
from spotify_streams.modeling import selection as sel
from spotify_streams.modeling.baselines import make_baseline
from spotify_streams.modeling.network import make_mlp
from spotify_streams.modeling.predict import load_model, predict_streams, save_model
from spotify_streams.schema import PLATFORM_COLUMNS

TINY = {"neurons": 4, "batch_size": 64, "epochs": 1}  # a network that only has to exist
FOLDS = [(np.arange(8), np.arange(8, 10))] * 5


@pytest.fixture
def linear_model(saved_models):
    return saved_models / "final"


def test_feature_sets_weekday_and_the_preprocessor(songs):
    """The preprocessor's columns depend on the feature set only: all songs, a few without NaN."""
    audio, pre, full = (set(ft.feature_columns(s)) for s in ["audio", "pre-release", "full"])
    assert audio < pre < full and not set(PLATFORM_COLUMNS) & pre
    with pytest.raises(ValueError, match="Unknown feature set 'sound'"):
        ft.feature_columns("sound")
    first = songs.iloc[0]  # the sample's first song: Friday 1957-06-28
    assert (str(first["release_date"].date()), first["release_weekday"]) == ("1957-06-28", "Fri")
    for feature_set, columns in ft.FEATURE_SETS.items():
        prep = ft.make_preprocessor(feature_set).set_output(transform="pandas")
        for rows in (songs, songs[songs["in_shazam_charts"].notna()].head(5)):
            X = prep.fit(rows[columns]).transform(rows[columns])
            assert list(X.columns) == ft.preprocessed_columns(feature_set), feature_set
    X = ft.make_preprocessor("full").set_output(transform="pandas").fit_transform(
        songs[ft.feature_columns("full")])
    assert "missingindicator_in_shazam_charts" in X and not X.isna().any().any()
    scaled = X["in_spotify_playlists"]
    assert abs(scaled.mean()) < 1e-9 and abs(scaled.std(ddof=0) - 1) < 1e-9


def test_logs_are_exact_and_the_same_on_every_cpu():
    """Known values numpy's log10/log1p miss by an ulp; the same bytes with numpy a level lower."""
    np.testing.assert_array_equal(ft.exact_log([1e8, 671166198.0, 278920.0, np.nan]),
                                  [8.0, 8.82683007596168, 5.445479656532881, np.nan])
    assert ft.exact_log([[0.0, 2.0]], base10=False).tolist() == [[0.0, 1.0986122886681098]]
    below = os.environ.get("NPY_DISABLE_CPU_FEATURES") or (  # conftest's emulation, else
        contract.numpy_levels(contract.simd_extensions()) or [(None, "")])[0][1]
    code = ("import hashlib; from spotify_streams import config, dataset as d, features as f; "
            "s = f.add_features(d.clean(d.load_raw(config.SAMPLE_DATA)).data); X = f.make_prepro"
            "cessor('full').fit_transform(s[f.feature_columns('full')]); print(hashlib.sha256("
            "f.log_streams(s).tobytes() + X.tobytes()).hexdigest())")
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NPY_DISABLE_CPU_FEATURES": level})
           for level in ("", below)]
    assert out[0].stdout == out[1].stdout != "", out[0].stderr + out[1].stderr


def test_splits_keep_artists_whole_cover_every_row_and_the_test_split_stays_put(songs):
    """Removing, editing or reordering songs moves no other song; the seed does."""
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
    splits = ev.cv_splits(songs, seed=0, n_splits=5, n_repeats=2)
    assert len(splits) == 10 and not np.array_equal(splits[0][1], splits[5][1])  # reshuffled
    for r in (0, 5):  # each repeat
        assert sorted(np.concatenate([va for _, va in splits[r:r + 5]])) == list(range(len(songs)))
    for tr, va in splits:
        assert not set(ev.artist_key(songs.iloc[tr])) & set(ev.artist_key(songs.iloc[va]))


def test_the_scoring_dict_reports_errors_as_positive_numbers():
    """A model predicting 1, 2.3, 4 for 1, 2, 3 (log10): errors 0, 0.3, 1."""
    same = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])  # predicts its input
    scores = {name: scorer(same, [[1.0], [2.3], [4.0]], [1.0, 2.0, 3.0])
              for name, scorer in ev.scoring().items() if name != "r2"}
    assert scores == pytest.approx({"mse": 1.09 / 3, "mae": 1.3 / 3, "median_factor": 1.9952623})
    assert ev.scoring()["r2"] == "r2"  # 10^0.3 above: the typical prediction is off by × 2


def test_paired_difference_is_the_corrected_t_test_and_real_iff_its_interval_excludes_0():
    """Known values: SE = √((1/4 + 2/8)·s²) = 0.0913 (not s/√4), t = 1.643 on 3 df. One family
    correction for interval and p: a verdict is real exactly when its interval excludes zero."""
    splits, a, b = FOLDS[:4], [0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.5]
    alone = {"difference": 0.15, "se": 0.0912871, "ci_low": -0.1405163, "ci_high": 0.4405163,
             "t": 1.6431677, "p_value": 0.1988922, "detectable": 0.3798382,
             "folds_won": "3 of 4", "verdict": "not detectable at this power"}  # a tie is no win
    assert ev.paired_difference(a, b, splits) == pytest.approx(alone)
    assert ev.paired_difference(a, b, splits, family=3) == pytest.approx(alone | {
        "ci_low": -0.2933501, "ci_high": 0.5933501, "p_value": 0.5966766, "detectable": 0.532672})
    one = ev.paired_difference([0.5], [0.4], splits)
    assert np.isnan(one["se"]) and np.isnan(one["p_value"])  # one fold: no evidence either way
    assert one["verdict"] == "not detectable at this power"
    rng = np.random.default_rng(0)
    for family in [1, 2, 5, 15] * 200:
        out = ev.paired_difference(rng.normal(0.02, 0.02, 5), np.zeros(5), FOLDS, family)
        assert (out["verdict"] == "real") == (out["ci_low"] > 0 or out["ci_high"] < 0), family


def test_r2_interval_resamples_groups_and_matches_r2_score():
    """Resampling artists is wider than songs; one resample is r2_score's weighted R²."""
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
    forest = make_baseline("rf", "full", seed=3, max_depth=4).named_steps["rf"]
    assert (forest.max_depth, forest.random_state, forest.n_estimators) == (4, 3, 100)
    assert clone(make_baseline("hgb", "full")).set_params(hgb__max_depth=3)["hgb"].max_depth == 3
    shallow = make_baseline("rf", "full", max_depth=1, n_estimators=3).fit(
        songs[ft.feature_columns("full")], ft.log_streams(songs))
    assert max(t.get_depth() for t in shallow.named_steps["rf"].estimators_) == 1
    with pytest.raises(ValueError, match="max_dept"):
        make_baseline("hgb", "full", max_dept=3)  # a typo is an error, not ignored
    with pytest.raises(ValueError, match="Unknown baseline 'forest'"):
        make_baseline("forest", "full")


def test_ensemble_fold_predictions_are_what_voting_regressor_predicts(songs):
    """06's mean of the members' held-out predictions is exactly VotingRegressor's."""
    (tr, va), = ev.cv_splits(songs, seed=0, n_repeats=1)[:1]
    X, y = songs[ft.feature_columns("full")], ft.log_streams(songs)
    members = [("mlp", make_mlp("full", seed=3, **TINY)),
               ("hgb", make_baseline("hgb", "full", seed=3, max_iter=5))]
    held_out = [m.fit(X.iloc[tr], y[tr]).predict(X.iloc[va]) for _, m in members]
    voting = VotingRegressor(members).fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    np.testing.assert_array_equal((held_out[0] + held_out[1]) / 2, voting)


SCORES = pd.DataFrame({  # per fold; A has the best mean (0.800)
    "A": [0.80, 0.82, 0.78, 0.81, 0.79],
    "B": [0.79, 0.83, 0.77, 0.80, 0.80],  # A − B: ±0.01 a fold, mean 0.002: within the noise
    "B, worse": [0.789, 0.829, 0.769, 0.799, 0.799],  # as B, 0.001 lower: still tied
    "C": [0.70, 0.71, 0.69, 0.70, 0.70]})  # 0.10 below A in every fold: not tied


def test_the_tie_rule_takes_the_simplest_within_the_noise_and_the_grid_refits_by_it():
    cost = pd.Series({"A": 3, "B": 1, "B, worse": 1, "C": 0})  # C: simplest, but worse
    assert sel.within_noise(SCORES, FOLDS) == ["A", "B", "B, worse"]
    assert sel.simplest_within_noise(SCORES, FOLDS, cost) == ("B", ["A", "B", "B, worse"])
    assert sel.simplest_within_noise(SCORES[["A", "C"]], FOLDS, cost)[0] == "A"
    assert sel.simplicity(["tuned MLP", "hgb tuned, free", "hgb tuned"]).to_dict() == {
        "tuned MLP": 9, "hgb tuned, free": 6, "hgb tuned": 4}
    # the grid refits by the same rule: B trains 50/32·64 = 100 units, A 100/16·128 = 800
    knobs = [(100, 16, 128), (50, 32, 64), (50, 32, 64), (10, 32, 64)]
    results = {f"split{i}_test_score": SCORES.iloc[i].to_numpy() for i in range(5)}
    results["params"] = [{sel.grid_param("epochs"): e, sel.grid_param("batch_size"): b,
                          sel.grid_param("neurons"): n} for e, b, n in knobs]
    assert sel.training_cost(results["params"][0]) == (800, 0)  # no lr or dropout
    assert sel.tie_rule(FOLDS)(results) == 1


@pytest.mark.parametrize("name, model", [
    ("mean", make_baseline("mean", "full")), ("linear", make_baseline("linear", "full")),
    ("hgb", make_baseline("hgb", "full", max_iter=5)), ("mlp", make_mlp("full", **TINY)),
    ("rf", make_baseline("rf", "full", n_estimators=3)), ("VotingRegressor", VotingRegressor(
        [("mlp", make_mlp("full", **TINY)), ("hgb", make_baseline("hgb", "full", max_iter=5))]))])
def test_saved_models_hold_only_the_types_the_series_trusts(songs, tmp_path, name, model):
    """Every kind 06 may save loads trusting only SAVED_TYPES and predicts as before."""
    X = songs[ft.feature_columns("full")]
    model = clone(model).fit(X, ft.log_streams(songs))
    bounds = conformal(songs, model)
    folder = save_model(model, tmp_path, "full", songs, bounds)
    for file in ["model", "conformal"]:
        found = set(skops.io.get_untrusted_types(file=folder / f"{file}.skops"))
        assert found <= predict.SAVED_TYPES, (file, "types to review:", found - predict.SAVED_TYPES)
    np.testing.assert_array_equal(load_model(folder).predict(X[:5]), model.predict(X[:5]))
    np.testing.assert_array_equal(load_model(folder, "conformal").predict_interval(X[:5])[1],
                                  bounds.predict_interval(X[:5])[1])
    assert json.loads((folder / "model.json").read_text()) == {
        "feature_set": "full", "model": name, "blank_key": "C", "quick": False,
        "reference_date": "2023-06-20", "confidence_levels": [0.5, 0.8, 0.9, 0.95]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["bpm"]), "lack column.*bpm"),
    (lambda d: d.drop(columns=PLATFORM_COLUMNS), "'full' feature set.*inputs='pre-release'"),
    (lambda d: d.assign(bpm="fast"), r"bpm is not a number \('fast'\)"),
    (lambda d: d.assign(released_month=13), "impossible release date"),
    (lambda d: d.assign(key="Db"), r"key is not a key \('Db'\)"),
    (lambda d: d.assign(mode="major"), r"mode is not Major or Minor \('major'\)"),
    (lambda d: d.assign(**{"danceability_%": 1e6}), "danceability_% outside 0–100"),
    (lambda d: d.assign(in_spotify_playlists=-1), r"in_spotify_playlists below 0 .*'-1'"),
    (lambda d: d.assign(in_spotify_playlists="inf"), r"in_spotify_playlists is not a number"),
    (lambda d: d.assign(released_year=1930), "release year before 1940"),
    (lambda d: d.assign(released_year=[2024, 2022, 2099]),
     "(?s)2 of 3 row.*row 0: released after the model's reference date 2023-06-20.*age_days"),
    (lambda d: d.set_axis(list("abc")).assign(key=["H", "C", "C"], mode=["Major", "Minor", None],
                                              bpm=[90, 100, 1e9]),  # each refused row, named
     r"^2 of 3 row\(s\) refused. Fix or remove them:\n  row a: key is not a key \('H'\)\n"
     r"  row c: mode is missing; bpm outside 20–400 or not whole \('1000000000.0'\)\n"),
    (lambda d: d.iloc[:0], "non-empty")])
def test_predict_streams_refuses_rows_it_cannot_use(songs, linear_model, change, message):
    """What clean() refuses, a missing column, a release after the model's reference date."""
    with pytest.raises(DataError, match=message):
        predict_streams(change(songs.head(3)), linear_model)


def test_song_age_comes_from_the_reference_date_or_age_days_and_never_lowers_the_forecast(
        songs, saved_models, linear_model):
    """The forecaster needs no platform counts; it never predicts less for an older song."""
    new_year = songs.head(5).assign(released_year=2023, released_month=1, released_day=1)
    np.testing.assert_allclose(predict_streams(new_year, linear_model, age_days=170),  # days
                               predict_streams(new_year, linear_model))  # to 2023-06-20
    for wrong in [-1, 2.5, "30", True]:
        with pytest.raises(ValueError, match="age_days"):
            predict_streams(new_year, linear_model, age_days=wrong)
    rows = songs.head(100).drop(columns=PLATFORM_COLUMNS)
    grid = np.column_stack([predict_streams(rows, saved_models / "pre-release", "pre-release", a)
                            for a in [0, 7, 90, 365, 730, 2922, 5000, 7305]])
    assert (np.diff(grid, axis=1) >= 0).all() and (grid[:, -1] > grid[:, 0]).mean() > 0.5
    with pytest.raises(ValueError, match="choose 'full' or 'pre-release'"):
        predict_streams(rows, inputs="playlists")


def test_raw_rows_get_the_features_training_gave_them_and_the_saved_conformal_intervals(
        songs, new_songs, linear_model):
    """The README's way: load_raw(target=False) rows, blank key and shazam count included, give
    the features training gave these songs; bounds are 10^ the saved CV+ bounds, nested."""
    rows = load_raw(new_songs, target=False)
    assert rows["key"].isna().any() and rows["in_shazam_charts"].isna().any()
    bounds = load_model(linear_model, "conformal").predict_interval(
        songs.head(8)[ft.feature_columns("full")])[1]  # the same songs, as training saw them
    outs = [predict_streams(rows, linear_model, interval=p) for p in predict.CONFIDENCE_LEVELS]
    for i, out in enumerate(outs):
        assert list(out.columns) == ["predicted", "lower", "upper"] and out.index.equals(rows.index)
        np.testing.assert_allclose(np.log10(out[["lower", "upper"]]), bounds[:, :, i])
    predicted = predict_streams(rows, linear_model)
    pd.testing.assert_series_equal(predicted, outs[-1]["predicted"])
    edges = [*(o["lower"] for o in reversed(outs)), predicted, *(o["upper"] for o in outs)]
    assert (np.diff(np.column_stack(edges)) > 0).all()  # lower 95% < ... < predicted < ... < upper
    for wrong in [0.7, 80, True, "0.8"]:
        with pytest.raises(ValueError, match=rf"interval={wrong!r}: one of 0.5, 0.8, 0.9, 0.95"):
            predict_streams(rows, linear_model, interval=wrong)
    model = load_model(linear_model)
    with pytest.raises(ValueError, match=r"confidence_level=\[0.5, 0.8, 0.9, 0.95\]"):
        save_model(model, linear_model / "other", "full", songs,
                   conformal(songs, model, levels=[0.9]))


def test_a_quick_model_is_never_the_default_and_a_file_with_other_types_is_refused(
        tmp_path, songs, monkeypatch):
    """A smoke-run model is used only when asked for by folder; a type never saved is refused."""
    folder = save_fitted(songs, tmp_path / "run" / "models" / "final",
                         make_baseline("linear", "full"), quick=True)
    monkeypatch.setattr(predict, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(predict, "resolve_run",
                        lambda *a: type("R", (), {"models_dir": tmp_path / "none"})())
    with pytest.raises(MissingStepError, match="No saved full \\(non-QUICK\\) model.*06_results"):
        predict_streams(songs.head(2))
    trusted = predict.SAVED_TYPES - {"mapie.regression.regression.CrossConformalRegressor"}
    monkeypatch.setattr(predict, "SAVED_TYPES", trusted)  # the conformal file is refused
    assert len(predict_streams(songs.head(2), folder)) == 2  # the model file is not
    with pytest.raises(UntrustedModelError, match="conformal.skops holds types.*CrossConformal"):
        predict_streams(songs.head(2), folder, interval=0.8)
    monkeypatch.setattr(predict, "SAVED_TYPES", set())  # as if the file held unknown types
    with pytest.raises(UntrustedModelError, match="holds types the series never saves.*exact_log"):
        predict_streams(songs.head(2), folder)
