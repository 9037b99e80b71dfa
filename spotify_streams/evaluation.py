"""Splits of whole artists, cross-validation folds, scores and the series' evidence rule."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import make_scorer, mean_absolute_error, mean_squared_error
from sklearn.model_selection import GroupKFold

from spotify_streams.dataset import _name_key, clean, load_raw
from spotify_streams.errors import DataError
from spotify_streams.features import add_features

MIN_SONGS = 50  # below this, a test set of whole artists and 5-fold CV leave too few songs


def artist_key(frame: pd.DataFrame) -> pd.Series:
    """The first-named artist, normalized like pair_key: what a split keeps on one side."""
    return _name_key(frame["artist(s)_name"].astype("str").str.split(",").str[0])


def split_train_test(df: pd.DataFrame, seed=42, test_size=0.2):
    """Hold out about test_size of the artists with all their songs (for notebook 06) by a hash
    of the first artist and the seed: adding, editing or removing a row moves no other song."""
    if len(df) < MIN_SONGS:
        raise DataError(f"Only {len(df)} usable songs after cleaning; the series needs at least "
                        f"{MIN_SONGS} for a test set and 5-fold cross-validation.")
    digest = artist_key(df).map(lambda k: hashlib.sha256(f"{seed}|{k}".encode()).digest()[:8])
    in_test = (digest.map(lambda d: int.from_bytes(d, "big")) / 2**64 < test_size).to_numpy()
    if in_test.sum() < 5 or (~in_test).sum() < MIN_SONGS * (1 - test_size) or \
            artist_key(df[~in_test]).nunique() < 5:  # 5 folds of whole artists
        raise DataError(f"{len(df)} songs by {artist_key(df).nunique()} artists: too few "
                        "artists to hold out a test set of whole artists. Use more songs.")
    return df[~in_test].reset_index(drop=True), df[in_test].reset_index(drop=True)


def cv_splits(df: pd.DataFrame, seed=42, n_splits=5, n_repeats=3, groups=None) -> list:
    """Repeated K-fold grouped by first artist (or `groups`): a list of (train positions,
    validation positions); no artist is on both sides of a fold."""
    groups = artist_key(df) if groups is None else groups
    return [(np.sort(tr), np.sort(va)) for r in range(n_repeats)
            for tr, va in GroupKFold(n_splits, shuffle=True, random_state=seed + r)
            .split(df, groups=groups)]


def median_factor(y_true, y_pred) -> float:
    """10^(median |error|) on log10 streams: 'the typical prediction is off by this factor'."""
    return float(10 ** np.median(np.abs(np.asarray(y_pred) - np.asarray(y_true))))


def scoring() -> dict:
    """cross_validate's scoring dict: R², and MSE, MAE (log10) and the median factor as
    positive numbers (lower is better: for reporting, never for choosing)."""
    return {"r2": "r2", "mse": make_scorer(mean_squared_error),
            "mae": make_scorer(mean_absolute_error), "median_factor": make_scorer(median_factor)}


ALPHA = 0.05  # the error rate of a whole family of comparisons (Bonferroni)
POWER = 0.8  # the power at which each comparison states the smallest difference it detects


def paired_difference(a, b, splits, family=1) -> dict:
    """The series' evidence rule, the corrected resampled t-test (Nadeau & Bengio 2003): scores
    a − b fold by fold. Folds share training rows, so the mean's variance is
    (1/J + n_validation/n_train)·s², not s²/J, and mean/SE follows Student's t with J − 1
    degrees of freedom. In a family of `family` comparisons (Bonferroni) the interval is the
    simultaneous one, at level 1 − ALPHA/family, and p is multiplied by `family`: a difference
    is "real" exactly when its interval excludes zero. `detectable` is the smallest difference
    this comparison finds with probability POWER at that level."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    folds, mean = len(d), float(d.mean())
    share = np.mean([len(va) / len(tr) for tr, va in splits[:folds]])
    se = float(np.sqrt((1 / folds + share) * d.var(ddof=1))) if folds > 1 else np.nan
    t = mean / se if se > 0 else np.nan  # NaN: one fold, or no difference at all
    dof = max(folds - 1, 1)
    critical = stats.t.ppf(1 - ALPHA / (2 * family), dof)
    p = np.minimum(1.0, family * 2 * stats.t.sf(abs(t), dof))  # NaN stays NaN
    return {"difference": mean, "se": se, "ci_low": mean - critical * se,
            "ci_high": mean + critical * se, "t": float(t), "p_value": float(p),
            "detectable": float((critical + stats.t.ppf(POWER, dof)) * se),
            "folds_won": f"{(d > 0).sum()} of {folds}", "verdict": verdict(p)}


def verdict(p_value) -> str:
    """The evidence rule's word for a (family-adjusted) p-value."""
    return "real" if p_value <= ALPHA else "not detectable at this power"


def r2_interval(y_true, y_pred, groups=None, minus=None, seed=42, n_resamples=2000,
                level=0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (scipy.stats.bootstrap) of test-set R², or with `minus` of
    the paired difference, resampling whole artists (groups=artist_key(test)) or songs. A
    resample weights each song by its group's draws; r2 is r2_score's weighted R² for 100
    resamples at once (tests/test_models.py checks they agree)."""
    codes = np.arange(len(y_true)) if groups is None else pd.factorize(np.asarray(groups))[0]
    y, n_groups = np.asarray(y_true, dtype=float), codes.max() + 1

    def r2(weight, pred):
        mean = (weight * y).sum(-1, keepdims=True) / weight.sum(-1, keepdims=True)
        return 1 - (weight * (y - pred) ** 2).sum(-1) / (weight * (y - mean) ** 2).sum(-1)

    def statistic(drawn, axis=-1):  # drawn: (resamples, groups) of group numbers
        weight = (drawn[..., None] == np.arange(n_groups)).sum(axis=-2)[..., codes]
        return r2(weight, np.asarray(y_pred)) - (0 if minus is None else
                                                 r2(weight, np.asarray(minus)))

    ci = stats.bootstrap((np.arange(n_groups),), statistic, rng=seed, n_resamples=n_resamples,
                         batch=100, confidence_level=level, method="percentile")
    return float(ci.confidence_interval.low), float(ci.confidence_interval.high)


def check_data(path) -> None:
    """Check up front that a CSV loads, cleans and has enough songs for the series (DataError)."""
    split_train_test(add_features(clean(load_raw(path)).data))
