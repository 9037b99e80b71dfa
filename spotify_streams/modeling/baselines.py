"""The baseline models: mean, linear, ridge and the tree ensembles, each behind the preprocessor."""

from __future__ import annotations

from sklearn.dummy import DummyRegressor
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline

from spotify_streams.features import AGE, feature_columns, make_preprocessor, preprocessed_columns
from spotify_streams.search_spaces import RIDGE_ALPHAS


def make_baseline(name: str, feature_set: str, seed=42, **params):
    """A pipeline make_preprocessor → 'mean', 'linear', 'ridge' (alpha searched over folds of
    whole artists: fit with ridge__groups=artist_key(rows)), 'hgb' (gradient boosting) or 'rf'
    (random forest). The step is called `name` (a search addresses f"{name}__max_depth");
    `params` set its knobs. The tree ensembles never predict fewer streams for an older song
    (monotonic_cst on song age: streams are running totals)."""
    monotone = ([int(c == AGE) for c in preprocessed_columns(feature_set)]
                if AGE in feature_columns(feature_set) else None)
    estimators = {
        "mean": lambda: DummyRegressor(strategy="mean"),
        "linear": LinearRegression,
        "ridge": lambda: GridSearchCV(Ridge(), {"alpha": RIDGE_ALPHAS},
                                      scoring="neg_mean_squared_error",
                                      cv=GroupKFold(5, shuffle=True, random_state=seed)),
        "hgb": lambda: HistGradientBoostingRegressor(random_state=seed, monotonic_cst=monotone),
        "rf": lambda: RandomForestRegressor(random_state=seed, monotonic_cst=monotone),
    }
    if name not in estimators:
        raise ValueError(f"Unknown baseline {name!r}; choose from {list(estimators)}.")
    return Pipeline([("prep", make_preprocessor(feature_set)),
                     (name, estimators[name]().set_params(**params))])
