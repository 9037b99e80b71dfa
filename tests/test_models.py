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


@pytest.fixture(scope="module")
def saved_model(songs, tmp_path_factory):
    """A tiny final model (2 epochs) saved the way notebook 06 saves it."""
    config = {**helpers.MLP_DEFAULT, "epochs": 2}
    fitted = helpers.fit_mlp(songs, "full", config, seed=1)
    return helpers.save_model(fitted, songs["release_date"].max(),
                              tmp_path_factory.mktemp("model"))


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

def test_split_keeps_repeated_pairs_on_one_side(songs):
    twin = songs.iloc[[0]].assign(streams=songs["streams"].iloc[0] + 1)
    data = pd.concat([songs, twin], ignore_index=True)  # the same pair twice
    train, test = helpers.split_train_test(data, seed=3)
    keys_train, keys_test = set(helpers.pair_key(train)), set(helpers.pair_key(test))
    assert not keys_train & keys_test
    assert len(train) + len(test) == len(data)
    for tr, va in helpers.cv_splits(data, seed=3, n_splits=5, n_repeats=2):
        assert not set(helpers.pair_key(data.iloc[tr])) & set(helpers.pair_key(data.iloc[va]))


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


def test_fold_arrays_fit_preprocessing_on_training_rows_only(songs):
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)
    X, y, train, val, stats = helpers.fold_arrays(songs, "audio", splits)
    tr, va = splits[0]
    assert train[0].sum() == len(tr) and val[0].sum() == len(va) and not (train[0] & val[0]).any()
    assert stats[0][0] == pytest.approx(helpers.log_streams(songs)[tr].mean())
    bpm = list(helpers.make_preprocessor("audio").fit(songs.iloc[tr][helpers.feature_columns(
        "audio")]).get_feature_names_out()).index("bpm")
    assert abs(X[0][tr, bpm].mean()) < 1e-9 and abs(X[0][va, bpm].mean()) > 1e-6


def test_cross_validate_mean_model_scores_about_zero(songs):
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)
    folds = helpers.cross_validate(lambda fs: helpers.make_baseline("mean", fs), songs, "full",
                                   splits)
    assert len(folds) == 5 and (folds["r2"] <= 0.01).all()


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="Unknown baseline 'forest'"):
        helpers.make_baseline("forest", "full")


def test_grid_helpers(songs):
    configs = helpers.expand_grid(helpers.SEED_GRID)
    assert len(configs) == 32 and len({tuple(c.items()) for c in configs}) == 32
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)
    grid = {**helpers.SEED_GRID, "epochs": [1, 2], "neurons": [8], "batch_size": [64]}
    cv = helpers.cross_validate_mlp(songs, "audio", splits, helpers.expand_grid(grid), seed=0)
    table = helpers.grid_table(cv.per_fold)
    assert len(table) == 8 and list(table["rank"]) == list(range(1, 9))
    assert table["mean_r2"].is_monotonic_decreasing
    effects = helpers.knob_effects(table)
    assert set(effects.index) == set(helpers.SEED_GRID)
    assert effects.loc["neurons", "effect"] == 0  # a single value has no effect


def test_mlp_cv_epoch_snapshots_match_separate_runs(songs):
    splits = helpers.cv_splits(songs, seed=0, n_repeats=1)[:2]
    base = {**helpers.MLP_DEFAULT, "neurons": 8, "batch_size": 64}
    both = helpers.cross_validate_mlp(songs, "audio", splits, [{**base, "epochs": 2},
                                                               {**base, "epochs": 4}])
    alone = helpers.cross_validate_mlp(songs, "audio", splits, [{**base, "epochs": 2}])
    np.testing.assert_array_equal(both.predictions[0], alone.predictions[0])
    assert len(both.curves[1]) == 4


def test_save_metrics_writes_rounded_json(tmp_path):
    run = helpers.resolve_run(helpers.SAMPLE_DATA, tmp_path)
    table = pd.DataFrame({"model": ["a"], "r2": [0.123456789]})
    path = helpers.save_metrics(run, "99_test", {"cv": table}, seed=1)
    payload = json.loads(path.read_text())
    assert payload["cv"] == [{"model": "a", "r2": 0.123457}] and payload["synthetic"]
    assert helpers.load_metrics(run, "99_test") == payload
    with pytest.raises(DataError, match="Run that notebook first"):
        helpers.load_metrics(run, "98_missing")


def test_permutation_importance_finds_the_only_useful_column(songs):
    def predict(d):  # a "model" that uses playlists only
        return np.log10(d["in_spotify_playlists"] + 1) * 0.7

    imp = helpers.permutation_importance(predict, songs, ["in_spotify_playlists", "bpm"],
                                         n_repeats=2)
    assert imp.iloc[0]["feature"] == "in_spotify_playlists"
    assert imp.set_index("feature").loc["bpm", "r2_drop"] == 0


# --- the saved model ----------------------------------------------------------------------------

def test_predict_streams_round_trip(songs, saved_model):
    rows = songs.head(5)
    predicted = helpers.predict_streams(rows, saved_model)
    assert predicted.index.equals(rows.index) and (predicted > 0).all()
    fitted_again = helpers.fit_mlp(songs, "full", {**helpers.MLP_DEFAULT, "epochs": 2}, seed=1)
    np.testing.assert_allclose(np.log10(predicted), fitted_again.predict(rows), rtol=1e-5)


def test_predict_streams_accepts_raw_text_rows(songs, saved_model):
    raw = helpers.load_raw(helpers.SAMPLE_DATA).iloc[20:23]  # text columns, separators, blanks
    assert helpers.predict_streams(raw, saved_model).notna().all()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop(columns=["bpm"]), "lack column.*bpm"),
    (lambda d: d.assign(bpm="fast"), "'bpm'.*'fast'"),
    (lambda d: d.assign(released_month=13), "impossible release date"),
    (lambda d: d.iloc[:0], "non-empty"),
])
def test_predict_streams_bad_input(songs, saved_model, change, message):
    with pytest.raises(DataError, match=message):
        helpers.predict_streams(change(songs.head(3)), saved_model)


def test_predict_streams_without_a_model(tmp_path, songs):
    with pytest.raises(DataError, match="Run notebook 06_results first"):
        helpers.predict_streams(songs.head(1), tmp_path)
