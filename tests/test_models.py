"""Unit tests for the features, evaluation and model sections of helpers.py."""

import json

import contract  # tests/contract.py: numpy's dispatch levels
import numpy as np
import pandas as pd
import pytest

import helpers
from helpers import DataError


@pytest.fixture(scope="module")
def songs():
    return helpers.add_features(helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data)


TINY = {"neurons": 8, "batch_size": 64, "epochs": 2}


@pytest.fixture(scope="module")
def saved_model(songs, tmp_path_factory):
    """A tiny final model (2 epochs) saved the way notebook 06 saves it."""
    fitted = helpers.make_mlp("full", seed=1, **TINY).fit(songs[helpers.feature_columns("full")],
                                                          helpers.log_streams(songs))
    return helpers.save_model(fitted, tmp_path_factory.mktemp("model"), "full", songs,
                              residuals=RESIDUALS)


RESIDUALS = np.linspace(-0.5, 0.5, 101)  # a stand-in for cross-validated residuals (log10)


# --- features ------------------------------------------------------------------------------------

def test_feature_sets_are_nested_and_named():
    audio, pre, full = (set(helpers.feature_columns(s)) for s in ["audio", "pre-release", "full"])
    assert audio < pre < full
    assert not set(helpers.PLATFORM_COLUMNS) & pre  # no platform count before the full set
    with pytest.raises(ValueError, match="Unknown feature set 'sound'"):
        helpers.feature_columns("sound")


@pytest.mark.parametrize("feature_set", list(helpers.FEATURE_SETS))
def test_the_preprocessors_columns_depend_on_the_feature_set_only(songs, feature_set):
    """preprocessed_columns (which make_baseline's monotone constraint indexes) names what the
    fitted preprocessor outputs, on all songs and on a few without a missing value or a key."""
    columns = helpers.feature_columns(feature_set)
    few = songs[songs["in_shazam_charts"].notna()].head(5)
    for rows in (songs, few):
        fitted = helpers.make_preprocessor(feature_set).fit(rows[columns])
        assert list(fitted.get_feature_names_out()) == helpers.preprocessed_columns(feature_set)
        assert fitted.transform(rows[columns]).shape[1] == len(fitted.get_feature_names_out())


def test_release_weekday(songs):
    row = songs.iloc[0]
    assert row["release_weekday"] == helpers.WEEKDAYS[row["release_date"].day_of_week]


def test_preprocessor_imputes_with_a_flag_and_scales(songs):
    pre = helpers.make_preprocessor("full").fit(songs[helpers.feature_columns("full")])
    X = pre.transform(songs[helpers.feature_columns("full")])
    names = list(pre.get_feature_names_out())
    assert "missingindicator_in_shazam_charts" in names
    assert not np.isnan(X).any()
    scaled = X[:, names.index("in_spotify_playlists")]
    assert abs(scaled.mean()) < 1e-9 and abs(scaled.std() - 1) < 1e-9


# --- evaluation ---------------------------------------------------------------------------------

def test_split_keeps_each_artist_on_one_side(songs):
    twin = songs.iloc[[0]].assign(streams=songs["streams"].iloc[0] + 1)
    data = pd.concat([songs, twin], ignore_index=True)  # the same pair twice
    train, test = helpers.split_train_test(data, seed=3)
    assert not set(helpers.artist_key(train)) & set(helpers.artist_key(test))
    assert not set(helpers.pair_key(train)) & set(helpers.pair_key(test))
    assert len(train) + len(test) == len(data) and len(test) > 0.1 * len(data)  # 12 artists
    for tr, va in helpers.cv_splits(data, seed=3, n_splits=5, n_repeats=2):
        assert not set(helpers.artist_key(data.iloc[tr])) & set(helpers.artist_key(data.iloc[va]))


def test_split_stays_put_when_a_row_is_removed_or_edited(songs):
    """A stable hash of the artist: removing or editing one song moves no other song."""
    def test_rows(data):
        return set(helpers.split_train_test(data, seed=5)[1]["raw_row"])

    before = test_rows(songs)
    assert test_rows(songs.drop(index=songs.index[7])) == before - {songs["raw_row"].iloc[7]}
    edited = songs.copy()
    edited.loc[edited.index[3], "bpm"] += 1
    assert test_rows(edited) == before
    assert test_rows(songs.sample(frac=1, random_state=0)) == before  # row order is irrelevant
    assert set(helpers.split_train_test(songs, seed=6)[1]["raw_row"]) != before  # the seed


def test_a_first_artist_is_the_group(songs):
    frame = pd.DataFrame({"artist(s)_name": ["Bad Bunny", "bad bunny, Drake", " Drake,Bad Bunny"]})
    assert helpers.artist_key(frame).tolist() == ["badbunny", "badbunny", "drake"]


def test_too_few_songs_is_a_data_error(songs):
    with pytest.raises(DataError, match="Only 10 usable songs.*at least 50"):
        helpers.split_train_test(songs.head(10))


def test_cv_splits_cover_every_row_once_per_repeat(songs):
    splits = helpers.cv_splits(songs, seed=0, n_splits=5, n_repeats=2)
    assert len(splits) == 10
    for r in range(2):
        validation = np.concatenate([va for _, va in splits[5 * r:5 * r + 5]])
        assert sorted(validation) == list(range(len(songs)))
    assert not np.array_equal(splits[0][1], splits[5][1])  # repeats reshuffle


def test_median_factor_and_the_scoring_dict(songs):
    """cross_validate with the series' scoring: each fold's scores are scikit-learn's metrics
    (errors as positive numbers) and the median factor of a model fitted on that fold."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.model_selection import cross_validate

    assert helpers.median_factor(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.3, 4.0])) == \
        pytest.approx(10 ** 0.3)
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)[:2]
    X, y = songs[helpers.feature_columns("audio")], helpers.log_streams(songs)
    scores = cross_validate(helpers.make_baseline("linear", "audio"), X, y, cv=splits,
                            scoring=helpers.scoring())
    tr, va = splits[0]
    pred = helpers.make_baseline("linear", "audio").fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    expected = {"r2": r2_score(y[va], pred), "mse": mean_squared_error(y[va], pred),
                "mae": mean_absolute_error(y[va], pred),
                "median_factor": helpers.median_factor(y[va], pred)}
    assert {m: scores[f"test_{m}"][0] for m in expected} == pytest.approx(expected, rel=1e-12)
    assert (scores["test_mse"] > 0).all() and (scores["test_median_factor"] > 1).all()


def test_ensemble_fold_predictions_are_what_voting_regressor_predicts(songs):
    """Notebook 06 scores the ensemble in CV as the mean of its members' held-out predictions
    instead of refitting them inside a VotingRegressor: the two must agree exactly."""
    from sklearn.ensemble import VotingRegressor
    from sklearn.model_selection import cross_validate

    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)[:1]
    X, y = songs[helpers.feature_columns("full")], helpers.log_streams(songs)
    members = [("mlp", helpers.make_mlp("full", seed=3, **TINY)),
               ("hgb", helpers.make_baseline("hgb", "full", seed=3))]
    held_out = []
    for _, member in members:
        out = cross_validate(member, X, y, cv=splits, return_estimator=True,
                             return_indices=True)
        held_out.append(out["estimator"][0].predict(X.iloc[out["indices"]["test"][0]]))
    tr, va = splits[0]
    voting = VotingRegressor(members).fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    np.testing.assert_array_equal((held_out[0] + held_out[1]) / 2, voting)


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="Unknown baseline 'forest'"):
        helpers.make_baseline("forest", "full")


def test_baseline_knobs_are_set_by_name_and_searchable(songs):
    """Notebook 05 searches a tree ensemble's knobs as f"{name}__knob" and notebook 06 builds
    the tuned model from the saved values: both paths must reach the estimator."""
    from sklearn.base import clone

    rf = helpers.make_baseline("rf", "full", seed=3, max_depth=4, min_samples_leaf=5)
    forest = rf.named_steps["rf"]
    assert (forest.max_depth, forest.min_samples_leaf) == (4, 5)
    assert forest.random_state == 3 and forest.n_estimators == 100
    searched = clone(helpers.make_baseline("hgb", "full")).set_params(hgb__max_depth=3)
    assert searched.named_steps["hgb"].max_depth == 3
    X, y = songs[helpers.feature_columns("full")], helpers.log_streams(songs)
    shallow = helpers.make_baseline("rf", "full", seed=3, max_depth=1).fit(X, y)
    assert max(t.get_depth() for t in shallow.named_steps["rf"].estimators_) == 1
    with pytest.raises(ValueError, match="max_dept"):
        helpers.make_baseline("hgb", "full", max_dept=3)  # a typo is an error, not ignored


def test_paired_difference_is_the_corrected_resampled_t_test():
    from scipy import stats

    splits = [(np.arange(8), np.arange(8, 10))] * 4  # validation / training = 0.25
    out = helpers.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.5], splits)
    d = np.array([0.1, 0.0, 0.2, 0.3])
    se = np.sqrt((1 / 4 + 0.25) * d.var(ddof=1))  # larger than the naive s/√J
    assert out["difference"] == pytest.approx(0.15) and out["se"] == pytest.approx(se)
    assert out["t"] == pytest.approx(0.15 / se)
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(0.15 / se, 3))  # J − 1 = 3 df
    half = stats.t.ppf(0.975, 3) * se  # 3.18 standard errors, not 2
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.15 - half, 0.15 + half))
    assert out["folds_won"] == "3 of 4"  # a tie is not a win
    one = helpers.paired_difference([0.5], [0.4], splits)
    assert np.isnan(one["se"]) and np.isnan(one["p_value"])  # one fold: no evidence either way


@pytest.mark.parametrize("p, passed", [
    ([0.01, 0.04, 0.03], [True, False, False]),  # 0.01 ≤ 0.05/3; then 0.03 > 0.05/2: stop
    ([0.001, 0.02, 0.04], [True, True, True]),  # 0.02 ≤ 0.025, 0.04 ≤ 0.05
    ([0.02, 0.02], [True, True]),
    ([0.03, 0.001, float("nan")], [False, True, False]),
    ([], []),
])
def test_holm_steps_down_through_the_family(p, passed):
    assert helpers.holm(p).tolist() == passed


def test_r2_interval_resamples_groups_and_matches_r2_score():
    """The vectorized R² of r2_interval is r2_score's weighted R²; resampling artists (songs in
    groups of 4 that share their error) gives a wider interval than resampling songs."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 4)
    y = rng.normal(size=200) + np.repeat(rng.normal(size=50), 4)
    pred = y + np.repeat(rng.normal(scale=0.8, size=50), 4)
    songs = helpers.r2_interval(y, pred, seed=1)
    artists = helpers.r2_interval(y, pred, groups=groups, seed=1)
    assert songs[0] < r2_score(y, pred) < songs[1] and artists[0] < r2_score(y, pred) < artists[1]
    assert artists[1] - artists[0] > 1.3 * (songs[1] - songs[0])
    assert helpers.r2_interval(y, pred, groups=groups, seed=1) == artists  # seeded
    weights = rng.integers(0, 3, size=200)  # what one resample of songs computes
    drawn = np.repeat(np.arange(200), weights)
    low, high = helpers.r2_interval(y[drawn], pred[drawn], n_resamples=100, level=0.0001)
    assert r2_score(y, pred, sample_weight=weights) == pytest.approx((low + high) / 2, abs=0.05)
    paired = helpers.r2_interval(y, pred, groups=groups, minus=pred, seed=1)
    assert paired == (0.0, 0.0)  # a model against itself


def test_logs_are_exact_and_the_same_on_every_cpu(songs):
    """The target and the preprocessor's log1p come from one fixed routine (decimal), not
    numpy's CPU-dependent kernels: every value equals the correctly rounded logarithm, and a
    process with numpy's SIMD kernels held below this CPU's level computes the same bytes."""
    import decimal
    import os
    import subprocess
    import sys

    context = decimal.Context(prec=40)
    streams = songs["streams"].to_numpy(dtype=float)
    exact = [float(context.log10(decimal.Decimal(v))) for v in streams]
    np.testing.assert_array_equal(helpers.log_streams(songs), exact)
    counts = songs[helpers.LOG_SCALED].fillna(0).to_numpy(dtype=float)
    exact1p = [[float(context.ln(decimal.Decimal(v) + 1)) for v in row] for row in counts]
    np.testing.assert_array_equal(helpers.exact_log(counts, base10=False), exact1p)
    code = ("import hashlib, helpers; s = helpers.add_features(helpers.clean(helpers.load_raw("
            "helpers.SAMPLE_DATA)).data); X = helpers.make_preprocessor('full').fit_transform("
            "s[helpers.feature_columns('full')]); print(hashlib.sha256("
            "helpers.log_streams(s).tobytes() + X.tobytes()).hexdigest())")
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NPY_DISABLE_CPU_FEATURES": ""})
    below = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "NPY_DISABLE_CPU_FEATURES": NUMPY_BELOW_NATIVE})
    assert here.returncode == 0 and below.returncode == 0, here.stderr + below.stderr
    assert here.stdout == below.stdout


NUMPY_BELOW_NATIVE = (contract.numpy_levels(contract.simd_extensions()) or [(None, '')])[0][1]


def test_save_metrics_writes_rounded_json(tmp_path):
    run = helpers.resolve_run(helpers.SAMPLE_DATA, tmp_path)
    table = pd.DataFrame({"model": ["a"], "r2": [0.123456789]})
    path = helpers.save_metrics(run, "99_test", {"cv": table}, seed=1)
    payload = json.loads(path.read_text())
    assert payload["cv"] == [{"model": "a", "r2": 0.123457}] and payload["synthetic"]
    assert helpers.load_metrics(run, "99_test") == payload
    with pytest.raises(DataError, match="Run that notebook first"):
        helpers.load_metrics(run, "98_missing")


def test_load_metrics_falls_back_to_the_committed_reports_on_the_real_file(tmp_path, capsys):
    """With SERIES_REPORTS_DIR elsewhere, 06 alone still finds 05's tuned configuration."""
    committed = helpers.REPORTS_DIR / "metrics" / "05_grid.json"
    if not committed.is_file():
        pytest.skip("reports/metrics/05_grid.json is not committed here")
    real = helpers.Run(helpers.RAW_DATA, tmp_path, tmp_path / "metrics", True, False)
    assert helpers.load_metrics(real, "05_grid")["tuned"]
    assert "using the committed" in capsys.readouterr().out
    other = helpers.Run(helpers.SAMPLE_DATA, tmp_path, tmp_path / "metrics", False, True)
    with pytest.raises(DataError, match="Run that notebook first"):
        helpers.load_metrics(other, "05_grid")


# --- the saved model ----------------------------------------------------------------------------

def test_predict_streams_round_trip(songs, saved_model):
    rows = songs.head(5)
    predicted = helpers.predict_streams(rows, saved_model)
    assert predicted.index.equals(rows.index) and (predicted > 0).all()
    fitted_again = helpers.make_mlp("full", seed=1, **TINY).fit(
        songs[helpers.feature_columns("full")], helpers.log_streams(songs))
    np.testing.assert_array_equal(np.log10(predicted).to_numpy(dtype="float32"),
                                  fitted_again.predict(rows[helpers.feature_columns("full")]))


def test_saved_model_records_how_to_read_new_rows(saved_model, songs):
    info = json.loads((saved_model / "model.json").read_text())
    assert info == {"feature_set": "full", "model": "mlp", "blank_key": "C",
                    "reference_date": str(songs["release_date"].max().date()), "quick": False,
                    "residuals": RESIDUALS.round(6).tolist()}


def test_predict_streams_reads_a_blank_key_as_training_did(songs, saved_model):
    """One parsing routine: a blank key is what clean() made of blanks (here C)."""
    raw = helpers.load_raw(helpers.SAMPLE_DATA).iloc[20:30]
    blank, as_c = raw.assign(key=None), raw.assign(key="C")
    pd.testing.assert_series_equal(helpers.predict_streams(blank, saved_model),
                                   helpers.predict_streams(as_c, saved_model))


def test_predict_streams_accepts_raw_text_rows(songs, saved_model):
    raw = helpers.load_raw(helpers.SAMPLE_DATA).iloc[20:23]  # text columns, separators, blanks
    assert helpers.predict_streams(raw, saved_model).notna().all()


@pytest.fixture(scope="module")
def linear_model(songs, tmp_path_factory):
    """A quick stand-in for the saved network (same save_model, same checks of new rows)."""
    fitted = helpers.make_baseline("linear", "full").fit(songs[helpers.feature_columns("full")],
                                                         helpers.log_streams(songs))
    return helpers.save_model(fitted, tmp_path_factory.mktemp("linear"), "full", songs,
                              residuals=RESIDUALS)


NEXT_YEAR = str(pd.Timestamp.today().year + 1)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["bpm"]), "lack column.*bpm"),
    (lambda d: d.assign(bpm="fast"), r"bpm is not a number \('fast'\)"),
    (lambda d: d.assign(released_month=13), "impossible release date"),
    (lambda d: d.assign(key="H"), r"key is not a key \('H'\)"),
    (lambda d: d.assign(key="c"), r"key is not a key \('c'\)"),
    (lambda d: d.assign(key="Db"), r"key is not a key \('Db'\)"),
    (lambda d: d.assign(mode="Dorian"), r"mode is not Major or Minor \('Dorian'\)"),
    (lambda d: d.assign(mode="major"), r"mode is not Major or Minor \('major'\)"),
    (lambda d: d.assign(mode=None), "mode is missing"),
    (lambda d: d.assign(bpm=1e9), r"bpm outside 20–400 or not whole \('1000000000.0'\)"),
    (lambda d: d.assign(**{"danceability_%": 1e6}), "danceability_% outside 0–100"),
    (lambda d: d.assign(in_spotify_playlists=-5), r"in_spotify_playlists below 0 .*'-5'"),
    (lambda d: d.assign(in_spotify_playlists=-1), r"in_spotify_playlists below 0 .*'-1'"),
    (lambda d: d.assign(in_spotify_playlists="inf"), r"in_spotify_playlists is not a number"),
    (lambda d: d.assign(released_year=1930), "release year before 1940"),
    (lambda d: d.assign(released_year=NEXT_YEAR), "released after the model's reference date"),
    (lambda d: d.iloc[:0], "non-empty"),
])
def test_predict_streams_bad_input(songs, linear_model, change, message):
    with pytest.raises(DataError, match=message):
        helpers.predict_streams(change(songs.head(3)), linear_model)


def test_predict_streams_names_each_refused_row_and_why(songs, linear_model):
    rows = songs.head(4).copy()
    rows.index = ["a", "b", "c", "d"]
    rows = rows.astype({"key": "str", "bpm": "float"})
    rows.loc["a", "key"], rows.loc["c", "bpm"], rows.loc["c", "mode"] = "H", 1e9, None
    with pytest.raises(DataError) as refused:
        helpers.predict_streams(rows, linear_model)
    text = str(refused.value)
    assert text.startswith("2 of 4 row(s) refused")
    assert "row a: key is not a key ('H')" in text
    assert "row c: mode is missing; bpm outside 20–400" in text
    assert "row b" not in text and "row d" not in text
    assert "Traceback" not in text


def test_predict_streams_accepts_what_clean_accepts(songs, linear_model):
    """A blank in_shazam_charts is imputed, a blank key means what it meant in training."""
    rows = songs.head(3).assign(in_shazam_charts=None, key=None)
    predicted = helpers.predict_streams(rows, linear_model)
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_a_release_after_the_reference_date_needs_an_age(songs, linear_model):
    """Its age is unknown: refused, naming the row, the reference date and age_days; with
    age_days (also for a future release date) it is predicted at that age."""
    reference = str(songs["release_date"].max().date())
    rows = songs.head(3).assign(released_year=[2024, 2022, int(NEXT_YEAR)])
    with pytest.raises(DataError, match=f"(?s)2 of 3 row.*row 0: released after the model's "
                                        f"reference date {reference}.*age_days"):
        helpers.predict_streams(rows, linear_model)
    assert helpers.predict_streams(rows, linear_model, age_days=30).notna().all()
    for wrong in [-1, 2.5, "30", True]:
        with pytest.raises(ValueError, match="age_days"):
            helpers.predict_streams(rows, linear_model, age_days=wrong)


def test_age_days_sets_every_rows_age(songs, linear_model):
    rows = songs.head(5)
    at_100 = helpers.predict_streams(rows, linear_model, age_days=100)
    same_age = rows.assign(released_year=2023, released_month=1, released_day=1)
    reference = songs["release_date"].max()
    days = (reference - pd.Timestamp("2023-01-01")).days
    np.testing.assert_allclose(helpers.predict_streams(same_age, linear_model, age_days=days),
                               helpers.predict_streams(same_age, linear_model))
    assert not np.allclose(at_100, helpers.predict_streams(rows, linear_model, age_days=3000))


def test_the_forecaster_never_predicts_fewer_streams_for_an_older_song(songs, tmp_path):
    """Gradient boosting is monotone in song age: over 200 songs and 12 ages from release day
    to 20 years, no prediction falls."""
    fitted = helpers.make_baseline("hgb", "pre-release", seed=0, max_depth=3).fit(
        songs[helpers.feature_columns("pre-release")], helpers.log_streams(songs))
    folder = helpers.save_model(fitted, tmp_path / "f", "pre-release", songs, RESIDUALS)
    rows = songs.head(200).drop(columns=helpers.PLATFORM_COLUMNS)
    ages = [0, 1, 7, 30, 90, 180, 365, 730, 1461, 2922, 5000, 7305]
    grid = np.column_stack([helpers.predict_streams(rows, folder, inputs="pre-release",
                                                    age_days=a) for a in ages])
    assert (np.diff(grid, axis=1) >= 0).all()
    assert (grid[:, -1] > grid[:, 0]).mean() > 0.5  # and age does raise them


def test_prediction_intervals_come_from_the_residuals(songs, linear_model):
    """interval=0.8: predicted, lower and upper, the bounds the conformal order statistics of
    the saved residuals; wider for 0.95; a bad level is named."""
    rows = songs.head(4)
    out = helpers.predict_streams(rows, linear_model, interval=0.8)
    assert list(out.columns) == ["predicted", "lower", "upper"] and out.index.equals(rows.index)
    assert (out["lower"] < out["predicted"]).all() and (out["predicted"] < out["upper"]).all()
    n = len(RESIDUALS)  # 101 sorted residuals: 10 % on each side -> the 10th and 92nd
    np.testing.assert_allclose(np.log10(out["upper"] / out["predicted"]),
                               RESIDUALS[int(np.ceil((n + 1) * 0.9)) - 1])
    np.testing.assert_allclose(np.log10(out["lower"] / out["predicted"]),
                               RESIDUALS[int(np.floor((n + 1) * 0.1)) - 1])
    wide = helpers.predict_streams(rows, linear_model, interval=0.95)
    assert (wide["upper"] > out["upper"]).all() and (wide["lower"] < out["lower"]).all()
    pd.testing.assert_series_equal(helpers.predict_streams(rows, linear_model),
                                   out["predicted"])
    with pytest.raises(ValueError, match="interval=80"):
        helpers.predict_streams(rows, linear_model, interval=80)


def test_predict_streams_without_a_model(tmp_path, songs):
    with pytest.raises(DataError, match="Run notebook 06_results first"):
        helpers.predict_streams(songs.head(1), tmp_path)


def test_a_quick_model_is_never_the_default(tmp_path, songs, monkeypatch):
    """`make quick` leaves a smoke-run model behind: predict_streams() must not pick it up
    silently; asked for by folder, it is used."""
    fitted = helpers.make_baseline("linear", "full").fit(songs[helpers.feature_columns("full")],
                                                         helpers.log_streams(songs))
    folder = helpers.save_model(fitted, tmp_path / "run" / "models" / "final", "full", songs,
                                RESIDUALS, quick=True)
    monkeypatch.setattr(helpers, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(helpers, "resolve_run",
                        lambda *a: type("R", (), {"models_dir": tmp_path / "none"})())
    with pytest.raises(DataError, match="No saved full \\(non-QUICK\\) model"):
        helpers.predict_streams(songs.head(2))
    assert len(helpers.predict_streams(songs.head(2), folder)) == 2


def test_the_pre_release_forecaster_needs_no_platform_counts(tmp_path, songs, linear_model):
    """A song not yet on playlists: the full model names its feature set and points to the
    pre-release forecaster, which predicts it."""
    fitted = helpers.make_baseline("hgb", "pre-release").fit(
        songs[helpers.feature_columns("pre-release")], helpers.log_streams(songs))
    helpers.save_model(fitted, tmp_path / "pre-release", "pre-release", songs, RESIDUALS)
    new = songs.head(3).drop(columns=helpers.PLATFORM_COLUMNS)
    with pytest.raises(DataError, match="'full' feature set.*inputs='pre-release'"):
        helpers.predict_streams(new, linear_model)
    predicted = helpers.predict_streams(new, tmp_path / "pre-release")
    assert len(predicted) == 3 and np.isfinite(predicted).all()
    with pytest.raises(ValueError, match="choose 'full' or 'pre-release'"):
        helpers.predict_streams(new, inputs="playlists")


def test_predict_streams_on_a_file_read_without_streams(tmp_path, linear_model):
    """The README's way: load_raw(..., target=False) on new songs, then predict_streams."""
    raw = helpers.load_raw(helpers.SAMPLE_DATA)
    kept = helpers.clean(raw).data["raw_row"].head(8)
    raw.loc[kept].drop(columns="streams").to_csv(tmp_path / "new.csv", index=False)
    rows = helpers.load_raw(tmp_path / "new.csv", target=False)
    predicted = helpers.predict_streams(rows, linear_model)
    assert len(predicted) == 8 and np.isfinite(predicted).all()


def test_cheapest_within_ignores_differences_below_the_tie_margin():
    """The refit rule of notebook 05: the best by 0.0003 R² loses to a cheaper configuration
    within the margin; a cheaper one outside the margin does not win; equal cost goes to
    the better score."""
    def results(rows):
        keys = list(helpers.ORIGINAL_GRID)
        return {"mean_test_score": np.array([r[-1] for r in rows]),
                **{f"param_{helpers.grid_param(k)}": np.array([r[i] for r in rows])
                   for i, k in enumerate(keys)}}

    rows = [(0.001, 0.2, 128, 16, 100, 0.7967),   # best
            (0.001, 0.3, 128, 32, 100, 0.7964),   # runner-up, half the steps
            (0.001, 0.2, 128, 32, 50, 0.7926),    # within 0.01, cheapest
            (0.001, 0.3, 128, 32, 50, 0.7897),    # same cost, lower score
            (0.01, 0.2, 64, 32, 50, 0.7763)]      # cheaper still, but 0.02 below the best
    assert helpers.cheapest_within(0.01)(results(rows)) == 2
    assert helpers.cheapest_within(0.0)(results(rows)) == 0
    assert helpers.cheapest_within(0.001)(results(rows)) == 1


@pytest.mark.parametrize("kind", ["mean", "linear", "hgb", "rf", "mlp", "ensemble"])
def test_saved_models_hold_only_the_types_the_series_trusts(songs, tmp_path, kind):
    """Each kind of model notebook 06 may choose and save (its candidates: the baselines, the
    MLP, the VotingRegressor ensemble) loads with skops.io trusting only SAVED_TYPES (a library
    release that renames a type fails here, naming it), and predicts as before saving."""
    import skops.io
    from sklearn.ensemble import VotingRegressor

    X, y = songs[helpers.feature_columns("full")], helpers.log_streams(songs)
    mlp = helpers.make_mlp("full", seed=1, **TINY)
    model = (mlp if kind == "mlp" else VotingRegressor(
        [("mlp", mlp), ("hgb", helpers.make_baseline("hgb", "full", seed=1))])
        if kind == "ensemble" else helpers.make_baseline(kind, "full", seed=1)).fit(X, y)
    folder = helpers.save_model(model, tmp_path, "full", songs, RESIDUALS)
    found = set(skops.io.get_untrusted_types(file=folder / "model.skops"))
    assert found <= helpers.SAVED_TYPES, f"types to review and add to SAVED_TYPES: " \
                                         f"{found - helpers.SAVED_TYPES}"
    np.testing.assert_array_equal(helpers.load_model(folder).predict(X[:5]), model.predict(X[:5]))


def test_a_model_file_with_other_types_is_refused(songs, tmp_path, monkeypatch):
    fitted = helpers.make_baseline("linear", "full").fit(songs[helpers.feature_columns("full")],
                                                         helpers.log_streams(songs))
    folder = helpers.save_model(fitted, tmp_path, "full", songs, RESIDUALS)
    monkeypatch.setattr(helpers, "SAVED_TYPES", set())  # as if the file held unknown types
    with pytest.raises(DataError, match="holds types the series never saves.*exact_log"):
        helpers.predict_streams(songs.head(2), folder)
