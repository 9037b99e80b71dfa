"""Where parallel work runs (local processes or a Dask cluster) and a progress bar for a search.

The bar uses public APIs only: a search's scorer is called once per candidate and fold, in the
worker that fitted it, so a scorer that also reports to the notebook's process over a local
socket (multiprocessing's connection) counts the finished fits. scikit-learn's callback API
would do this too, but it is experimental and may change without deprecation.
"""

from __future__ import annotations

import contextlib
import os
import threading
from multiprocessing import connection

import joblib
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid, check_cv
from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:10}| {n_fmt}/{total_fmt} {unit}"  # no timings


@contextlib.contextmanager
def parallel_backend(scheduler=None, timeout="20s"):
    """Where joblib-parallel work (GridSearchCV, cross_validate) runs: local processes, or a
    Dask cluster at `scheduler` (or DASK_SCHEDULER_ADDRESS); unreachable: ConnectionError."""
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        yield "local processes"
        return
    from dask.distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"Cannot reach the Dask scheduler at {address} ({exc}). Start it, "
                              "fix the address, or unset it to run on local processes.") from None
    with client, joblib.parallel_backend("dask"):
        yield f"Dask cluster at {address} ({len(client.scheduler_info()['workers'])} workers)"


class ReportingScorer:
    """A scorer (scikit-learn's `scorer(estimator, X, y)` protocol) that returns what `scorer`
    returns and reports each call to the process that listens at `address`. It pickles to the
    workers as the scorer, the address and the key; a worker that cannot reach the listener
    (a remote Dask worker) reports nothing."""

    def __init__(self, scorer, address, key: bytes):
        self.scorer, self.address, self.key = scorer, address, key

    def __call__(self, estimator, X, y):
        score = self.scorer(estimator, X, y)
        with contextlib.suppress(OSError), connection.Client(self.address,
                                                             authkey=self.key) as client:
            client.send(1)
        return score


@contextlib.contextmanager
def search_progress(search, desc="grid search"):
    """A tqdm bar of a search's finished fits (candidates × folds) while the `with` block runs
    search.fit; the search's scoring is restored afterwards. Single-metric searches only."""
    scoring = search.scoring
    candidates = len(ParameterGrid(search.param_grid))
    total = candidates * check_cv(search.cv).get_n_splits()
    key = os.urandom(16)
    listener = connection.Listener(("127.0.0.1", 0), authkey=key)
    bars = []  # drawn at the first finished fit, after whatever the cell prints first

    def serve():  # a connection per finished fit; None ends it
        while (message := listener.accept().recv()) is not None:
            bars[:] = bars or [tqdm(total=total, desc=desc, unit="fits", ncols=100,
                                    bar_format=BAR_FORMAT)]
            bars[0].update(message)
        for bar in bars:
            bar.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    search.set_params(scoring=ReportingScorer(check_scoring(search.estimator, scoring),
                                              listener.address, key))
    try:
        yield search
    finally:
        search.set_params(scoring=scoring)
        with contextlib.suppress(OSError), connection.Client(listener.address,
                                                             authkey=key) as client:
            client.send(None)
        thread.join(timeout=10)
        listener.close()
