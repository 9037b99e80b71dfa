"""The Keras seed network and the grid search: small fits on the synthetic sample."""

import json
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from spotify_streams.evaluation import artist_key, cv_splits
from spotify_streams.features import feature_columns, log_streams, make_preprocessor
from spotify_streams.modeling.network import KerasMLPRegressor, build_mlp, make_mlp
from spotify_streams.modeling.selection import grid_param
from spotify_streams.parallel import parallel_backend, search_progress

TINY = {"neurons": 16, "batch_size": 32, "epochs": 20}  # enough to learn something
SHORT = {"neurons": 8, "batch_size": 64, "epochs": 3}  # enough to tell two fits apart


@pytest.fixture(scope="module")
def data(songs):
    return songs[feature_columns("full")], log_streams(songs)


def test_build_mlp_is_the_seed_network_and_our_fast_fit_scores_like_keras_plain_fit(songs, data):
    """build_mlp is the seed's network; Keras's fit on numpy and our tf.data path: CV R² alike."""
    import keras

    original = build_mlp(10, neurons=64, dropout=0.3, learning_rate=0.01)
    assert [(type(layer).__name__, getattr(layer, "units", getattr(layer, "rate", None)))
            for layer in original.layers] == [("Dense", 64), ("Dropout", 0.3), ("Dense", 32),
                                              ("Dropout", 0.3), ("Dense", 1)]
    assert original.loss == "mse" and type(original.optimizer).__name__ == "Adam"
    assert float(original.optimizer.learning_rate) == pytest.approx(0.01)
    X, y = data
    splits = cv_splits(songs, seed=0, n_splits=3, n_repeats=1)
    fast = cross_val_score(make_mlp("full", seed=0, **TINY), X, y, cv=splits, scoring="r2")
    plain = []
    for tr, va in splits:
        prepare, target = make_preprocessor("full").fit(X.iloc[tr]), StandardScaler()
        keras.utils.set_random_seed(0)
        model = build_mlp(len(prepare.get_feature_names_out()), neurons=16, seed=0)
        model.fit(prepare.transform(X.iloc[tr]), target.fit_transform(y[tr, None]), verbose=0,
                  epochs=TINY["epochs"], batch_size=TINY["batch_size"])
        pred = target.inverse_transform(model.predict(prepare.transform(X.iloc[va]), verbose=0))
        plain.append(r2_score(y[va], pred.ravel()))
    assert fast.mean() > 0.3  # it learned something
    assert abs(fast.mean() - np.mean(plain)) < max(fast.std(), np.std(plain))  # not bit-equal


def test_a_seeded_fit_is_bit_identical_in_any_process_and_layout(data, monkeypatch, tmp_path):
    """Same seed, same predictions: after the trainer cache served other fits, in two fresh
    processes, and with batches gathered instead of laid out in memory; another seed differs,
    and so does a fourth epoch (all epochs run in one pass: each must train)."""
    pd.to_pickle(data, tmp_path / "data.pkl")
    code = ("import json, pandas as pd; from spotify_streams.modeling.network import make_mlp\n"
            f"X, y = pd.read_pickle({str(tmp_path / 'data.pkl')!r})\n"
            f"m = make_mlp('full', seed=1, **{SHORT!r}).fit(X, y)\n"
            "print(json.dumps(m.predict(X[:20]).tolist()))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    X, y = data
    for params in [{"learning_rate": 0.01, "batch_size": 32, "epochs": 2}, {"dropout": 0.3}]:
        make_mlp("full", seed=5, **{**SHORT, **params}).fit(X, y)
    here = make_mlp("full", seed=1, **SHORT).fit(X, y).predict(X[:20])
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    fresh = [np.array(json.loads(out.strip().splitlines()[-1]), np.float32) for out, _ in outputs]
    np.testing.assert_array_equal(fresh, [here, here])
    assert not np.array_equal(here, make_mlp("full", seed=2, **SHORT).fit(X, y).predict(X[:20]))
    four = make_mlp("full", seed=1, **{**SHORT, "epochs": 4}).fit(X, y).predict(X[:20])
    assert not np.array_equal(here, four), "a fourth epoch changed nothing"
    monkeypatch.setattr("spotify_streams.modeling.network.MATERIALIZE_BYTES", 0)  # gathered
    np.testing.assert_array_equal(here, make_mlp("full", seed=1, **SHORT).fit(X, y).predict(X[:20]))


def search(songs, n_jobs):
    """The learning-rate grid of short fits: 2 candidates × 2 folds (whole artists), no refit."""
    grid = {grid_param("learning_rate"): [0.001, 0.01]}
    return GridSearchCV(make_mlp("full", seed=0, **SHORT), grid, scoring="r2", n_jobs=n_jobs,
                        refit=False, cv=cv_splits(songs, seed=0, n_repeats=1)[:2])


def results(fitted_search) -> pd.DataFrame:
    return pd.DataFrame(fitted_search.cv_results_).filter(regex="param|test_score")  # no times


def test_the_bar_two_processes_and_dask_change_no_search_result(songs, data, capsys, monkeypatch):
    """The bar (2 candidates × 2 folds = 4 fits) on 1 and 2 processes and a LocalCluster of two
    threads (fits take turns) give one process's cv_results_. No scheduler: ConnectionError."""
    from dask.distributed import LocalCluster, get_task_stream

    plain = results(search(songs, 1).fit(*data))
    assert joblib.effective_n_jobs(2) == 2  # conftest.py turns them off in notebook kernels only
    for jobs in [1, 2]:
        with search_progress(search(songs, jobs)) as watched:
            watched.fit(*data)
        assert capsys.readouterr().err.endswith("\rgrid search: 100%|██████████| 4/4 fits\n"), jobs
        pd.testing.assert_frame_equal(results(watched), plain, obj=f"{jobs} process(es)")
        assert watched.scoring == "r2"  # restored
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        with parallel_backend() as where, get_task_stream() as tasks:
            assert where.startswith(f"Dask cluster at {cluster.scheduler_address} (2 workers")
            pd.testing.assert_frame_equal(results(search(songs, 2).fit(*data)), plain)
        assert len(tasks.data) >= 4, "the 4 fits did not run on the cluster"
    with pytest.raises(ConnectionError, match="Cannot reach the Dask scheduler"):
        with parallel_backend("tcp://127.0.0.1:9", timeout="1s"):
            pass


def test_the_network_is_a_scikit_learn_estimator():
    """scikit-learn's estimator checks pass, but two that do not apply (listed with why)."""
    expected = {"check_regressors_train": "2 epochs of 4 units: no skill expected",
                "check_methods_sample_order_invariance": "float32 sums in another order"}
    outcomes = check_estimator(KerasMLPRegressor(neurons=4, epochs=2, batch_size=8),
                               expected_failed_checks=expected, on_fail=None)
    assert {r["check_name"] for r in outcomes if r["status"] == "failed"} == set()
    assert sum(r["status"] == "passed" for r in outcomes) >= 40


def test_early_stopping_holds_out_whole_artists(data, songs):
    """Validation rows: whole artists (3 of the sample's 12) drawn with the seed; it stops early."""
    groups = artist_key(songs)
    fitted = make_mlp("full", seed=2, **{**TINY, "epochs": 200}, early_stopping=True,
                      patience=3).fit(*data, mlp__groups=groups)["mlp"].regressor_
    assert "val_loss" in fitted.history_ and len(fitted.history_["loss"]) < 200
    held = fitted.validation_rows_
    assert not set(groups.iloc[held]) & set(groups.drop(groups.index[held]))
    assert (len(held), held[:6].tolist()) == (108, [3, 4, 5, 18, 26, 40])
