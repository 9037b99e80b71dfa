"""The seed network in Keras: the fast training path, reproducibility, the grid search and its
scale-out on Dask. Small cases on the synthetic sample, so the whole file runs in about a minute."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV

import helpers

TINY = {"neurons": 16, "batch_size": 32, "epochs": 20}


@pytest.fixture(scope="module")
def songs():
    return helpers.add_features(helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data)


@pytest.fixture(scope="module")
def data(songs):
    return songs[helpers.feature_columns("full")], helpers.log_streams(songs)


def test_network_is_the_seed_architecture():
    model = helpers.build_mlp(10, neurons=64, dropout=0.3, learning_rate=0.01)
    kinds = [(type(layer).__name__, getattr(layer, "units", getattr(layer, "rate", None)))
             for layer in model.layers]
    assert kinds == [("Dense", 64), ("Dropout", 0.3), ("Dense", 32), ("Dropout", 0.3),
                     ("Dense", 1)]
    assert model.loss == "mse" and type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


def test_fast_path_scores_like_plain_model_fit(songs, data):
    """Same folds, same network: the tf.data path and Keras's plain fit on numpy give CV R²
    within one fold spread of each other (not bit-equal: the shuffles differ)."""
    import keras
    from sklearn.model_selection import cross_validate
    from sklearn.preprocessing import StandardScaler

    X, y = data
    splits = helpers.cv_splits(songs, seed=0, n_splits=3, n_repeats=1)
    fast = cross_validate(helpers.make_mlp("full", seed=0, **TINY), X, y, cv=splits,
                          scoring="r2")["test_score"]
    plain = []
    for tr, va in splits:
        prepare = helpers.make_preprocessor("full").set_output(transform="default").fit(
            X.iloc[tr])
        target = StandardScaler().fit(y[tr, None])
        keras.utils.set_random_seed(0)
        model = helpers.build_mlp(len(prepare.get_feature_names_out()), neurons=16, seed=0)
        model.fit(prepare.transform(X.iloc[tr]), target.transform(y[tr, None]), verbose=0,
                  epochs=TINY["epochs"], batch_size=TINY["batch_size"])
        pred = target.inverse_transform(model.predict(prepare.transform(X.iloc[va]), verbose=0))
        plain.append(r2_score(y[va], pred.ravel()))
    assert fast.mean() > 0.3  # it learned something
    assert abs(fast.mean() - np.mean(plain)) < max(fast.std(), np.std(plain))


FRESH_SEED = 1


@pytest.fixture(scope="module")
def fresh_processes():
    """Predictions of the same fit (seed FRESH_SEED) in two fresh processes, run side by side."""
    code = (
        "import json, helpers\n"
        "songs = helpers.add_features(helpers.clean(helpers.load_raw(helpers.SAMPLE_DATA)).data)\n"
        "X, y = songs[helpers.feature_columns('full')], helpers.log_streams(songs)\n"
        f"m = helpers.make_mlp('full', seed={FRESH_SEED}, **{TINY!r}).fit(X, y)\n"
        "print(json.dumps(m.predict(X.iloc[:20]).tolist()))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    return [np.array(json.loads(out.strip().splitlines()[-1]), dtype=np.float32)
            for out, _ in outputs]


def test_reused_training_graph_gives_a_fresh_models_result(data, fresh_processes):
    """Fits that reuse a traced training step (after other configurations trained on it) give
    bit-identical predictions to the same fit in a fresh process."""
    X, y = data
    others = [{"learning_rate": 0.01, "batch_size": 64, "epochs": 3}, {"dropout": 0.3}]
    for params in others:
        helpers.make_mlp("full", seed=5, **{**TINY, **params}).fit(X, y)
    here = helpers.make_mlp("full", seed=FRESH_SEED, **TINY).fit(X, y).predict(X.iloc[:20])
    np.testing.assert_array_equal(here, fresh_processes[0])


def test_two_runs_in_two_processes_are_identical(fresh_processes):
    np.testing.assert_array_equal(*fresh_processes)


def test_seed_changes_the_result(data):
    X, y = data
    a, b = (helpers.make_mlp("full", seed=s, **TINY).fit(X, y).predict(X.iloc[:5]) for s in (3, 4))
    assert not np.array_equal(a, b)


def small_search(songs, n_jobs, *callbacks):
    grid = {helpers.grid_param("learning_rate"): [0.001, 0.01]}
    search = GridSearchCV(helpers.make_mlp("full", seed=0, **{**TINY, "epochs": 5}), grid,
                          scoring="r2", cv=helpers.cv_splits(songs, seed=0, n_repeats=1)[:2],
                          n_jobs=n_jobs, refit=False)
    search.set_callbacks(*callbacks)
    search.fit(songs[helpers.feature_columns("full")], helpers.log_streams(songs))
    keep = ["params", "split0_test_score", "split1_test_score", "mean_test_score",
            "rank_test_score"]
    return pd.DataFrame(search.cv_results_)[keep]


@pytest.fixture(scope="module")
def one_process_search(songs):
    return small_search(songs, 1)


GRID_BAR = "grid search: 100%|██████████| 4/4 fits"  # helpers.FitProgress, 2 candidates × 2 folds


def test_search_is_the_same_on_one_and_two_processes(songs, one_process_search, capsys):
    """The same scores, also with notebook 05's progress callback (helpers.FitProgress), whose
    bar counts the fits the worker processes finish."""
    import joblib

    # conftest.py turns joblib's processes off for the notebook kernels only, not here
    assert joblib.effective_n_jobs(2) == 2, "joblib would run this search in one process"
    pd.testing.assert_frame_equal(one_process_search,
                                  small_search(songs, 2, helpers.FitProgress()))
    assert capsys.readouterr().err.rsplit("\r", 1)[-1] == GRID_BAR + "\n"  # its final state


def test_search_runs_unchanged_on_a_dask_cluster(songs, one_process_search, monkeypatch,
                                                 capsys):
    """A real dask.distributed LocalCluster (two worker processes); the scheduler address
    reaches the search through DASK_SCHEDULER_ADDRESS, as a user would set it. Notebook 05's
    progress callback counts the fits there too."""
    from dask.distributed import LocalCluster

    local = one_process_search
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        with helpers.parallel_backend() as where:
            assert where.startswith(f"Dask cluster at {cluster.scheduler_address} (2 workers")
            on_dask = small_search(songs, 2, helpers.FitProgress())
    pd.testing.assert_frame_equal(local, on_dask)
    assert capsys.readouterr().err.rsplit("\r", 1)[-1] == GRID_BAR + "\n"  # its final state


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(helpers.DataError, match="Cannot reach the Dask scheduler"):
        with helpers.parallel_backend("tcp://127.0.0.1:9", timeout="1s"):
            pass


def test_the_network_is_a_scikit_learn_estimator():
    """scikit-learn's own estimator checks pass, but two that do not apply: a 2-epoch network
    of 4 units is not expected to reach the R² that check_regressors_train asks of a
    regressor, and float32 matrix products in another row order differ in the 8th digit."""
    from sklearn.utils.estimator_checks import check_estimator

    expected = {"check_regressors_train": "2 epochs of 4 units: no skill expected",
                "check_methods_sample_order_invariance": "float32 sums in another order"}
    results = check_estimator(helpers.KerasMLPRegressor(neurons=4, epochs=2, batch_size=8),
                              expected_failed_checks=expected, on_fail=None)
    failed = {r["check_name"] for r in results if r["status"] == "failed"}
    assert failed == set(), failed
    assert {r["check_name"] for r in results if r["status"] == "xfail"} <= set(expected)
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_early_stopping_holds_out_whole_artists(data, songs):
    """With early_stopping, the validation rows are whole groups (artists), drawn with the
    seed; the network stops before its epoch budget and keeps its best weights."""
    from sklearn.model_selection import GroupShuffleSplit

    X, y = data
    groups = helpers.artist_key(songs)
    model = helpers.make_mlp("full", seed=2, **{**TINY, "epochs": 200}, early_stopping=True,
                             patience=3).fit(X, y, mlp__groups=groups)
    history = model["mlp"].regressor_.history_
    assert "val_loss" in history and len(history["loss"]) < 200
    held = model["mlp"].regressor_.validation_rows_
    kept = np.setdiff1d(np.arange(len(X)), held)
    assert len(held) and not set(groups.iloc[held]) & set(groups.iloc[kept])
    expected = next(GroupShuffleSplit(1, test_size=0.2, random_state=2).split(X, y, groups))[1]
    np.testing.assert_array_equal(held, expected)  # drawn with the seed
