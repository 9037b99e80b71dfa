"""Saved models and predictions for new songs (predict_streams)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spotify_streams.config import BUILD_DIR, _is_whole, resolve_run
from spotify_streams.dataset import parse_fields, release_dates, row_problems, typed_categories
from spotify_streams.errors import DataError, MissingStepError, UntrustedModelError
from spotify_streams.features import AGE, add_features, feature_columns
from spotify_streams.files import replacing
from spotify_streams.schema import DATE_COLUMNS, KEYS, MODES, PLATFORM_COLUMNS, REQUIRED_COLUMNS

MODEL_FOLDERS = {"full": "final", "pre-release": "pre-release"}  # notebook 06 saves both


CONFIDENCE_LEVELS = (0.5, 0.8, 0.9, 0.95)  # the levels of the saved conformal intervals

# skops.io loads only the types it is told to trust, unlike pickle. Beyond its defaults, the
# series' saved pipelines and their conformal regressors (MAPIE's CrossConformalRegressor with
# GroupKFold) hold these (tests/test_models.py fails, naming the type, if a library release
# renames one); a file that holds any other type is not loaded.
SAVED_TYPES = {"spotify_streams.features.exact_log",
               "spotify_streams.modeling.network.KerasMLPRegressor", "numpy.dtype",
               "sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch",  # VotingRegressor's
               "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
               # conformal.skops: the regressor, its fold models' ensemble, its score, its folds
               "mapie.regression.regression.CrossConformalRegressor",
               "mapie.regression.regression._MapieRegressor",
               "mapie.estimator.regressor.EnsembleRegressor",
               "mapie.conformity_scores.bounds.absolute.AbsoluteConformityScore",
               "sklearn.model_selection._split.GroupKFold"}


def save_model(pipeline, folder, feature_set: str, songs: pd.DataFrame, conformal,
               quick=False) -> Path:
    """Save what predict_streams needs (skops.io, each file replaced whole): the pipeline fitted
    on all training songs (model.skops: the point prediction), the fitted conformal regressor
    (conformal.skops: MAPIE's CrossConformalRegressor built with
    confidence_level=list(CONFIDENCE_LEVELS), whose CV+ intervals predict_streams returns) and
    model.json (the feature set, what a blank key meant, the reference date for song age, the
    interval levels); `quick` marks a smoke-run model, never picked by default."""
    import skops.io

    folder = Path(folder)
    rows = songs[feature_columns(feature_set)].head(1)
    if np.shape(conformal.predict_interval(rows)[1])[-1] != len(CONFIDENCE_LEVELS):
        raise ValueError("conformal: a fitted CrossConformalRegressor with "
                         f"confidence_level={list(CONFIDENCE_LEVELS)} (CONFIDENCE_LEVELS).")
    for name, fitted in [("model", pipeline), ("conformal", conformal)]:
        with replacing(folder / f"{name}.skops") as partial:
            skops.io.dump(fitted, partial)
    steps = getattr(pipeline, "steps", [[type(pipeline).__name__]])  # a Pipeline's last step
    info = {"feature_set": feature_set, "model": steps[-1][0],
            "blank_key": "unknown" if (songs["key"] == "unknown").any() else "C",
            "reference_date": str(songs["release_date"].max().date()), "quick": bool(quick),
            "confidence_levels": list(CONFIDENCE_LEVELS)}
    with replacing(folder / "model.json") as partial:
        partial.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return folder


def model_folder(inputs: str, model_dir=None) -> Path:
    """The folder of the saved model predict_streams would use (MissingStepError if none)."""
    if inputs not in MODEL_FOLDERS:
        raise ValueError(f"inputs={inputs!r}: choose 'full' or 'pre-release'.")
    name = MODEL_FOLDERS[inputs]  # default: the notebooks' output, then `make run`'s
    for folder in [Path(model_dir)] if model_dir is not None else [
            resolve_run().models_dir / name, BUILD_DIR / "run" / "models" / name]:
        info = folder / "model.json"
        if (folder / "model.skops").is_file() and info.is_file() and (
                model_dir is not None or not json.loads(info.read_text())["quick"]):
            return folder
    raise MissingStepError(f"No saved {inputs} (non-QUICK) model found. Run notebook 06_results "
                    "first (or the series with `make run`), or pass model_dir=.")


def load_model(folder, name="model"):
    """A saved model file, read by skops.io trusting only SAVED_TYPES (UntrustedModelError
    otherwise): name="model", the pipeline; name="conformal", its conformal regressor."""
    import skops.io

    path = Path(folder) / f"{name}.skops"
    if not path.is_file():
        raise MissingStepError(f"{path} does not exist: this model was saved before the series "
                               "saved conformal intervals. Run notebook 06_results again (or "
                               "`make run`).")
    found = skops.io.get_untrusted_types(file=path)
    if set(found) - SAVED_TYPES:
        raise UntrustedModelError(f"{path} holds types the series never saves "
                        f"({', '.join(sorted(set(found) - SAVED_TYPES))}), so it is not loaded. "
                        "Use a model made by this series (notebook 06 or `make run`).")
    return skops.io.load(path, trusted=found)


def check_interval(interval) -> None:
    """interval: None or one of CONFIDENCE_LEVELS (ValueError naming them otherwise)."""
    if interval is not None and (isinstance(interval, bool) or interval not in CONFIDENCE_LEVELS):
        raise ValueError(f"interval={interval!r}: one of "
                         f"{', '.join(map(str, CONFIDENCE_LEVELS))}, the levels the saved "
                         "conformal intervals are calibrated at (CONFIDENCE_LEVELS).")


def predict_streams(frame: pd.DataFrame, model_dir=None, inputs="full", age_days=None,
                    interval=None):
    """Predicted total streams for rows in the raw file's schema (load_raw(path, target=False))
    from a model notebook 06 saved (read with skops.io, trusting only the types the series
    saves: see load_model).
    - inputs="full": the final model, which needs the playlist and chart counts (known once a
      song is out); "pre-release": the forecaster (audio, key, mode, artist count, release).
    - The prediction is 10^(predicted log10 streams): a median, not a mean (notebook 06).
    - Song age describes a reference class, not one song's path. Every song in the data is a
      2023 hit, so the models describe songs of a given age that are in a top list like this
      one: a 30-day-old song in it is an exceptional hit, a 20-year-old one an evergreen that
      survived; the data cannot show how one song's streams grow. Each row's age is the days
      from its release date to the model's reference date (the newest release in its data;
      later releases are refused), or age_days=N for every row. For example, age_days=365:
      the typical total of songs that are a year old and in a top list like this one — not
      the total your song will have after a year.
    - interval=0.8 (one of CONFIDENCE_LEVELS: 0.5, 0.8, 0.9, 0.95): a DataFrame of predicted,
      lower and upper, the bounds of MAPIE's cross-conformal (CV+) interval at that level from
      folds of whole artists (coverage measured in notebook 06); else a Series.
    Rows that clean() would drop or refuse are refused with one DataError naming each row."""
    folder = model_folder(inputs, model_dir)
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError("predict_streams needs a non-empty DataFrame with the CSV's columns.")
    if age_days is not None and not (_is_whole(age_days) and age_days >= 0):
        raise ValueError(f"age_days={age_days!r}: a whole number of days, 0 or more.")
    check_interval(interval)
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    rows = prepare_rows(frame, info, age_days)[feature_columns(info["feature_set"])]
    log10 = np.asarray(load_model(folder).predict(rows), dtype=float)
    predicted = pd.Series(10 ** log10, index=frame.index, name="predicted")
    if interval is None:
        return predicted
    levels = info.get("confidence_levels", [])
    if interval not in levels:
        raise MissingStepError(f"{folder} holds no {interval} interval (its levels: "
                               f"{levels or 'none'}). Run notebook 06_results again.")
    bounds = load_model(folder, "conformal").predict_interval(rows)[1][:, :, levels.index(interval)]
    return pd.DataFrame({"predicted": predicted, "lower": 10 ** bounds[:, 0],
                         "upper": 10 ** bounds[:, 1]}, index=frame.index)


def prepare_rows(frame: pd.DataFrame, info: dict, age_days=None) -> pd.DataFrame:
    """Model inputs for new rows (raw schema, no target needed), parsed and checked as clean()
    does (parse_fields, row_problems), with song age (predict_streams); unusable rows are
    refused: one DataError lists each by its index label."""
    inputs = feature_columns(info["feature_set"])
    needed = [c for c in REQUIRED_COLUMNS if c in inputs or c in DATE_COLUMNS]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        hint = (" For songs not yet on playlists, use the pre-release forecaster: "
                "predict_streams(rows, inputs='pre-release')."
                if set(missing) <= set(PLATFORM_COLUMNS) else "")
        raise DataError(f"Rows lack column(s) the model needs: {', '.join(missing)} (it uses "
                        f"the '{info['feature_set']}' feature set).{hint}")
    df, bad = parse_fields(frame[needed], info["blank_key"])
    reference = pd.Timestamp(info["reference_date"])
    why = _refusals(frame[needed], df, bad, as_of=pd.Timestamp.max)
    df["release_date"] = release_dates(df)
    if age_days is None:
        late = f"released after the model's reference date {reference:%Y-%m-%d} (the newest " \
               "release in its data), so its age is unknown: pass age_days= for a given age"
        why = why.mask((df["release_date"] > reference).to_numpy(),
                       (why + "; " + late).str.removeprefix("; "))
    if why.any():
        refused = [f"row {label}: {text}" for label, text in why[why != ""].items()]
        more = [f"... and {len(refused) - 20} more"] if len(refused) > 20 else []
        raise DataError(f"{len(refused)} of {len(frame)} row(s) refused. Fix or remove them:\n  "
                        + "\n  ".join(refused[:20] + more) + f"\n(keys: {', '.join(KEYS)}, "
                        f"blank: {info['blank_key']}; modes: {', '.join(MODES)})")
    df[AGE] = (reference - df["release_date"]).dt.days if age_days is None else age_days
    return add_features(typed_categories(df))


def _refusals(raw: pd.DataFrame, parsed: pd.DataFrame, bad: dict, as_of=None) -> pd.Series:
    """Per row, why clean() would not use it ('' if it would): a value that is no number, key or
    mode; a missing value (in_shazam_charts is imputed, a blank key means blank_key); a rule of
    row_problems. Offending values are quoted."""
    invalid = {"key": "is not a key", "mode": "is not Major or Minor"}
    rules = {f"{c} {invalid.get(c, 'is not a number')}": m for c, m in bad.items()}
    rules |= {f"{c} is missing": parsed[c].isna() & ~bad[c]
              for c in parsed if c != "in_shazam_charts"}
    rules |= row_problems(parsed, as_of).to_dict("series")
    why = pd.Series("", index=raw.index, dtype="str")
    for rule, mask in rules.items():
        col = rule.split()[0]
        text = rule + (" (" + raw[col].astype("str").map(repr) + ")"
                       if col in raw and not rule.endswith("missing") else "")
        why = why.mask(mask.to_numpy(), why + "; " + text)
    return why.str.removeprefix("; ")
