"""Model inputs: the feature sets, derived columns, exact logarithms and the preprocessor."""

from __future__ import annotations

import decimal
import functools

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from spotify_streams.schema import AUDIO_NUMERIC, KEYS, MODES, PLATFORM_COLUMNS, TARGET

AGE = "days_since_release"
FEATURE_SETS = {
    # Does the sound of a song drive streams?
    "audio": [*AUDIO_NUMERIC, "key", "mode"],
    # What is known at release, plus exposure time (streams are all-time totals).
    "pre-release": [*AUDIO_NUMERIC, "key", "mode", "artist_count", "released_month",
                    "release_weekday", AGE],
    # Everything, including platform presence: largely a consequence of streams (leakage).
    "full": [*AUDIO_NUMERIC, "key", "mode", "artist_count", "released_month",
             "release_weekday", AGE, *PLATFORM_COLUMNS],
}
CATEGORICAL = ["key", "mode", "release_weekday"]
LOG_SCALED = [*PLATFORM_COLUMNS, AGE]  # heavy right tails: log1p first
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def feature_columns(feature_set: str) -> list:
    """The input columns of a named feature set ('audio', 'pre-release' or 'full')."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"Unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}.")
    return FEATURE_SETS[feature_set]


def add_features(clean_df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived model inputs (release weekday) to a cleaned frame."""
    weekday = clean_df["release_date"].dt.day_of_week.map(dict(enumerate(WEEKDAYS)))
    return clean_df.assign(release_weekday=pd.Categorical(weekday, categories=WEEKDAYS))


# numpy picks its log kernels by the CPU, and its AVX-512 ones return other last bits; trees turn
# one ulp of the target into 1e-4 of R². So the series' logarithms come from Python's decimal
# module: correctly rounded, the same bits on any machine (docs/reproducibility.md).
_DECIMAL = decimal.Context(prec=34)


@functools.cache
def _exact_log(value: float, base10: bool) -> float:
    if value != value:  # NaN passes through (a missing count, imputed later)
        return value
    return float(_DECIMAL.log10(decimal.Decimal(value)) if base10
                 else _DECIMAL.ln(decimal.Decimal(value) + 1))


def exact_log(values, base10: bool = True) -> np.ndarray:
    """log10(values), or log(1 + values) with base10=False: identical on every machine."""
    values = np.asarray(values, dtype="float64")
    unique, inverse = np.unique(values, return_inverse=True)
    logs = np.array([_exact_log(float(v), base10) for v in unique], dtype="float64")
    return logs[inverse].reshape(values.shape)


def log_streams(df: pd.DataFrame) -> np.ndarray:
    """The modelling target: log10 of total streams."""
    return exact_log(df[TARGET])


CATEGORIES = {"key": [*KEYS, "unknown"], "mode": MODES, "release_weekday": WEEKDAYS}
MAY_BE_MISSING = "in_shazam_charts"  # the one input clean() leaves missing


def make_preprocessor(feature_set: str):
    """Column transformer for one feature set: standardization, log1p first for heavy tails,
    median imputation with a "was missing" flag for in_shazam_charts, one-hot categories. Its
    columns (preprocessed_columns) depend on the feature set only, not on the rows."""
    columns = feature_columns(feature_set)
    log1p = FunctionTransformer(exact_log, kw_args={"base10": False},
                                feature_names_out="one-to-one")
    cats = [c for c in columns if c in CATEGORICAL]
    parts = [("num", StandardScaler(), [c for c in columns if c not in LOG_SCALED + cats]),
             ("log", make_pipeline(log1p, StandardScaler()),
              [c for c in columns if c in LOG_SCALED and c != MAY_BE_MISSING]),
             ("missing", FeatureUnion([("value", make_pipeline(
                 log1p, SimpleImputer(strategy="median"), StandardScaler())),
                 ("flag", MissingIndicator(features="all"))], verbose_feature_names_out=False),
              [c for c in columns if c == MAY_BE_MISSING]),
             ("cat", OneHotEncoder(categories=[CATEGORIES[c] for c in cats],
                                   handle_unknown="ignore", sparse_output=False), cats)]
    return ColumnTransformer([p for p in parts if p[2]], verbose_feature_names_out=False,
                             n_jobs=1)


def preprocessed_columns(feature_set: str) -> list:
    """The names of make_preprocessor's output columns, in order."""
    columns = feature_columns(feature_set)
    names = [c for c in columns if c not in LOG_SCALED + CATEGORICAL]
    names += [c for c in columns if c in LOG_SCALED and c != MAY_BE_MISSING]
    names += [MAY_BE_MISSING, f"missingindicator_{MAY_BE_MISSING}"] * (MAY_BE_MISSING in columns)
    return names + [f"{c}_{v}" for c in columns if c in CATEGORICAL for v in CATEGORIES[c]]
