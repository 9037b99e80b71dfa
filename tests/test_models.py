"""Unit tests for the features, evaluation and model sections of helpers.py."""

import json

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
    return helpers.save_model(fitted, tmp_path_factory.mktemp("model"), "full", songs)


# --- features ------------------------------------------------------------------------------------

def test_feature_sets_are_nested_and_named():
    audio, pre, full = (set(helpers.feature_columns(s)) for s in ["audio", "pre-release", "full"])
    assert audio < pre < full
    assert not set(helpers.PLATFORM_COLUMNS) & pre  # no platform count before the full set
    with pytest.raises(ValueError, match="Unknown feature set 'sound'"):
        helpers.feature_columns("sound")


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


def test_regression_metrics_known_values():
    m = helpers.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mse"] == pytest.approx(1 / 3)
    assert m["mae"] == pytest.approx(1 / 3)
    assert m["r2"] == pytest.approx(1 - 1 / 2)
    assert m["median_factor"] == pytest.approx(1.0)


def test_cross_validate_mean_model_scores_about_zero(songs):
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)
    folds = helpers.cross_validate_model(helpers.make_baseline("mean", "full"), songs, "full",
                                         splits)
    assert len(folds) == 5 and (folds["r2"] <= 0.01).all()
    assert (folds[["mse", "mae"]] > 0).all().all() and (folds["median_factor"] > 1).all()


def test_cross_validate_model_matches_regression_metrics(songs):
    """Each fold's scores are regression_metrics of a model fitted on that fold's training rows."""
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)[:1]
    folds = helpers.cross_validate_model(helpers.make_baseline("linear", "audio"), songs, "audio",
                                         splits)
    tr, va = splits[0]
    X, y = songs[helpers.feature_columns("audio")], helpers.log_streams(songs)
    pred = helpers.make_baseline("linear", "audio").fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    expected = helpers.regression_metrics(y[va], pred)
    assert folds.iloc[0][list(expected)].to_dict() == pytest.approx(expected, rel=1e-12)


def test_ensemble_fold_predictions_are_what_voting_regressor_predicts(songs):
    """Notebook 06 scores the ensemble in CV as the mean of its members' held-out predictions
    instead of refitting them inside a VotingRegressor: the two must agree exactly."""
    from sklearn.ensemble import VotingRegressor

    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)[:1]
    members = [("mlp", helpers.make_mlp("full", seed=3, **TINY)),
               ("hgb", helpers.make_baseline("hgb", "full", seed=3))]
    held_out = [helpers.fold_predictions(m, songs, "full", splits)[0] for _, m in members]
    tr, va = splits[0]
    X, y = songs[helpers.feature_columns("full")], helpers.log_streams(songs)
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


def test_paired_difference_known_values():
    splits = [(np.arange(8), np.arange(8, 10))] * 4  # validation / training = 0.25
    out = helpers.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.5], splits)
    d = np.array([0.1, 0.0, 0.2, 0.3])
    assert out["r2_difference"] == pytest.approx(0.15)
    # corrected for overlapping training sets: (1/J + 0.25) s², larger than the naive s²/J
    assert out["r2_difference_se"] == pytest.approx(np.sqrt((1 / 4 + 0.25) * d.var(ddof=1)))
    assert out["r2_difference_se"] > d.std(ddof=1) / 2
    assert out["folds_won"] == "3 of 4"  # a tie is not a win


def test_r2_interval_brackets_the_test_r2_and_narrows_with_more_songs():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(size=800)
    pred = 0.8 * y + rng.normal(scale=0.5, size=800)
    low, high = helpers.r2_interval(y[:200], pred[:200], seed=1)
    assert low < r2_score(y[:200], pred[:200]) < high
    assert helpers.r2_interval(y[:200], pred[:200], seed=1) == (low, high)  # seeded
    low_800, high_800 = helpers.r2_interval(y, pred, seed=1)
    assert high_800 - low_800 < 0.75 * (high - low)


def test_knob_effects_pairs_configurations_fold_by_fold():
    rows = []
    for values in __import__("itertools").product(*helpers.SEED_GRID.values()):
        config = dict(zip(helpers.SEED_GRID, values))
        # learning rate 0.01 loses 0.02 on every fold; dropout 0.3 wins on fold 0 only
        base = 0.8 - 0.02 * (config["learning_rate"] == 0.01)
        folds = [base + 0.01 * (config["dropout"] == 0.3) * (k == 0) for k in range(5)]
        rows.append({**config, **{f"split{k}_test_score": f for k, f in enumerate(folds)},
                     "mean_test_score": np.mean(folds)})
    splits = [(np.arange(8), np.arange(8, 10))] * 5
    effects = helpers.knob_effects(pd.DataFrame(rows), splits)
    assert list(effects.index) == list(helpers.SEED_GRID)
    lr = effects.loc["learning_rate"]
    assert lr["change"] == "0.001 → 0.01" and lr["r2_difference"] == pytest.approx(-0.02)
    assert lr["r2_difference_se"] == pytest.approx(0, abs=1e-12)
    assert lr["folds_won"] == "0 of 5" and lr["pairs_won"] == "0 of 16"
    dropout = effects.loc["dropout"]
    assert dropout["r2_difference"] == pytest.approx(0.002)
    assert dropout["folds_won"] == "1 of 5" and dropout["pairs_won"] == "16 of 16"
    assert effects.loc["neurons", "r2_difference"] == pytest.approx(0)
    single = pd.DataFrame(rows)
    single = single[single["neurons"] == 64]
    assert "neurons" not in helpers.knob_effects(single, splits).index  # one value: no effect


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
    assert info == {"feature_set": "full", "blank_key": "C",
                    "reference_date": str(songs["release_date"].max().date()), "quick": False}


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
    return helpers.save_model(fitted, tmp_path_factory.mktemp("linear"), "full", songs)


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
    (lambda d: d.assign(released_year=NEXT_YEAR), "release date after"),
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
    """A blank in_shazam_charts is imputed, a blank key means what it meant in training, and a
    release after the model's reference date (but not in the future) is a new song, age 0."""
    rows = songs.head(3).assign(in_shazam_charts=None, key=None, released_year=2025)
    predicted = helpers.predict_streams(rows, linear_model)
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_predict_streams_without_a_model(tmp_path, songs):
    with pytest.raises(DataError, match="Run notebook 06_results first"):
        helpers.predict_streams(songs.head(1), tmp_path)


def test_a_quick_model_is_never_the_default(tmp_path, songs, monkeypatch):
    """`make quick` leaves a smoke-run model behind: predict_streams() must not pick it up
    silently; asked for by folder, it is used."""
    fitted = helpers.make_baseline("linear", "full").fit(songs[helpers.feature_columns("full")],
                                                         helpers.log_streams(songs))
    folder = helpers.save_model(fitted, tmp_path / "run" / "models" / "final", "full", songs,
                                quick=True)
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
    helpers.save_model(fitted, tmp_path / "pre-release", "pre-release", songs)
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
        keys = list(helpers.SEED_GRID)
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
