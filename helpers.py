"""Shared plumbing for the Spotify-streams notebook series: settings and paths, data, features,
evaluation, models, saved models and predictions, figures. What the series teaches (Keras,
scikit-learn's searches and displays, seaborn) the notebooks call from those libraries.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import hashlib
import io
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from multiprocessing import connection
from numbers import Integral
from pathlib import Path

# Before TensorFlow is imported: no C++ log lines or oneDNN notice in notebook outputs, and one
# thread per process for TensorFlow, OpenMP and BLAS: the series runs fits in parallel
# processes instead (faster and identical, measured in docs/performance.md). oneDNN is capped
# at AVX2, so an AVX-512 CPU sums as an AVX2 one does (docs/reproducibility.md).
for _name, _value in [("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_ENABLE_ONEDNN_OPTS", "0"),
                      ("TF_NUM_INTRAOP_THREADS", "1"), ("TF_NUM_INTEROP_THREADS", "1"),
                      ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("OMP_NUM_THREADS", "1")]:
    os.environ.setdefault(_name, _value)

# ruff: noqa: E402  (the imports below come after the settings above)
import joblib
import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import make_scorer, mean_absolute_error, mean_squared_error
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits
from tqdm import tqdm

threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))  # libraries loaded before this one
# loky's recycling of a worker past 300 MB, reported as "A worker stopped": a false alarm
# (joblib#869, fixed in loky#641, not in joblib 1.6.0).
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given",
                        category=UserWarning)

# ----------------------------------------------------------------------------------------------
# Settings and paths
# ----------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"
RAW_DATA = DATA_DIR / "spotify-2023.csv"
SAMPLE_DATA = DATA_DIR / "sample" / "synthetic-songs.csv"
REPORTS_DIR = ROOT / "reports"
BUILD_DIR = ROOT / "build"
REAL_SHA256 = "26fd1292465877c24a9f5bfc6bf933c0715356a9c7d3197f2c4bc8b1a668a215"
DOWNLOAD_HINT = (
    "Download it from Kaggle into data/spotify-2023.csv, e.g. "
    "`kaggle datasets download -d nelgiriyewithana/top-spotify-songs-2023 -p data --unzip` "
    "or with kagglehub (see README, 'Getting the data')."
)


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Run:
    """Where one run of the series reads its data and writes its outputs."""

    data_path: Path
    output_dir: Path
    metrics_dir: Path
    is_real: bool
    is_synthetic: bool

    processed_path = property(lambda self: self.output_dir / "processed" / "spotify_clean.csv")
    models_dir = property(lambda self: self.output_dir / "models")
    figures_dir = property(lambda self: self.metrics_dir.parent / "figures")


def resolve_run(data_path=None, output_dir=None, quick=False) -> Run:
    """The data file and output folders of a run (default: the real file, else the sample). On
    the real file, metrics go to the committed reports/ (or SERIES_REPORTS_DIR), except QUICK."""
    if data_path is None:
        data_path = RAW_DATA if RAW_DATA.exists() else SAMPLE_DATA
    data_path = Path(data_path).expanduser().resolve()
    is_real = data_path.is_file() and file_sha256(data_path) == REAL_SHA256
    is_synthetic = data_path == SAMPLE_DATA.resolve()
    if output_dir is not None:
        out = Path(output_dir).expanduser().resolve()
    elif is_real and not quick:
        reports = Path(os.environ.get("SERIES_REPORTS_DIR") or REPORTS_DIR)
        return Run(data_path, BUILD_DIR / "real", reports / "metrics", True, False)
    else:
        out = BUILD_DIR / ("real-quick" if is_real else "synthetic" if is_synthetic
                           else data_path.stem)
    return Run(data_path, out, out / "metrics", is_real, is_synthetic)


def _is_whole(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_path(value) -> bool:
    return value is None or isinstance(value, str | os.PathLike) and bool(str(value).strip())


PARAMETER_RULES = {  # notebook parameter: (test, what it must be)
    "QUICK": (lambda v: isinstance(v, bool), "True or False"),
    "SEED": (lambda v: _is_whole(v) and 0 <= v < 2**32, "a whole number from 0 to 2**32 - 1"),
    "N_JOBS": (lambda v: _is_whole(v) and v >= 1, "a positive whole number"),
    "DATA_PATH": (_is_path, "None or a file path"),
    "OUTPUT_DIR": (_is_path, "None or a folder path"),
    "DASK_SCHEDULER": (lambda v: v is None or isinstance(v, str) and bool(v.strip()),
                       "None or a scheduler address"),
}


def check_parameters(**parameters) -> None:
    """Check a notebook's parameters (papermill passes `-p QUICK yes` as the text 'yes'); a
    DataError names each wrong one."""
    unknown = [name for name in parameters if name not in PARAMETER_RULES]
    if unknown:
        raise TypeError(f"check_parameters: unknown parameter(s) {', '.join(unknown)}")
    wrong = [f"{name} must be {PARAMETER_RULES[name][1]}, not {value!r} ({type(value).__name__})"
             for name, value in parameters.items() if not PARAMETER_RULES[name][0](value)]
    if wrong:
        raise DataError("Bad notebook parameter(s): " + "; ".join(wrong) + ". With papermill: "
                        "-p QUICK True -p SEED 42 (run_series.py: --quick, --seed 42).")


def data_banner(run: Run) -> str:
    """A one-line (or empty) warning about the data a notebook runs on."""
    if run.is_synthetic:
        return ("⚠ SYNTHETIC SAMPLE: every number below comes from a generated sample, not from "
                "the Kaggle file, and says nothing about real songs. " + DOWNLOAD_HINT)
    if not run.is_real:
        return f"Note: running on {run.data_path.name}, not the original Kaggle file."
    return ""


def setup_notebook(**parameters) -> Run:
    """A notebook's first call: check its parameters, resolve its run, say which data it runs
    on (a loud banner for the synthetic sample) and set the look of every figure."""
    check_parameters(**parameters)
    run = resolve_run(parameters.get("DATA_PATH"), parameters.get("OUTPUT_DIR"),
                      quick=parameters.get("QUICK", False))
    if run.is_real:
        print(f"Data: {run.data_path.name}, the original Kaggle file (sha256 verified).")
    else:
        from IPython.display import Markdown, display

        display(Markdown(f"> **{data_banner(run)}**"))
    sns.set_theme(style="whitegrid", context="notebook")  # 150 dpi: sharp at README width
    mpl.rcParams.update({"figure.figsize": (9, 4), "figure.dpi": 150, "savefig.dpi": 150})
    return run


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class DataError(ValueError):
    """The input data cannot be used; the message names the problem and the fix."""


TARGET = "streams"
NAME_COLUMNS = ["track_name", "artist(s)_name"]
DATE_COLUMNS = ["released_year", "released_month", "released_day"]
AUDIO_NUMERIC = ["bpm", "danceability_%", "valence_%", "energy_%", "acousticness_%",
                 "instrumentalness_%", "liveness_%", "speechiness_%"]
KEYS = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
MODES = ["Major", "Minor"]
REQUIRED_COLUMNS = [  # the original file's order
    "track_name", "artist(s)_name", "artist_count", "released_year", "released_month",
    "released_day", "in_spotify_playlists", "in_spotify_charts", "streams",
    "in_apple_playlists", "in_apple_charts", "in_deezer_playlists", "in_deezer_charts",
    "in_shazam_charts", "bpm", "key", "mode", *AUDIO_NUMERIC[1:],
]
NUMERIC_COLUMNS = [c for c in REQUIRED_COLUMNS if c not in [*NAME_COLUMNS, "key", "mode"]]
RESERVED_COLUMNS = ["raw_row", "release_date", "days_since_release", "release_weekday"]
MIN_PLAUSIBLE_STREAMS = 100_000  # a chart hit below this is a typo (see notebook 02)
MIN_PLAUSIBLE_YEAR = 1940  # earlier release years in this list are placeholders (notebook 02)
VALUE_RANGES = {  # whole numbers within these bounds, or a row is unusable (see row_problems)
    "artist_count": (1, np.inf), "bpm": (20, 400),
    **{c: (0, np.inf) for c in NUMERIC_COLUMNS if c.startswith("in_")},
    **dict.fromkeys(AUDIO_NUMERIC[1:], (0, 100)),
}


def _decode(raw: bytes) -> tuple[str, str]:
    """Bytes to text and the encoding read: 'utf-8' (BOM or not), 'damaged utf-8' (most
    non-ASCII bytes form UTF-8 characters, as in the original file; broken ones become U+FFFD)
    or 'cp1252' (most stand alone: a CP1252/Latin-1 re-save)."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    with contextlib.suppress(UnicodeDecodeError):
        return raw.decode("utf-8"), "utf-8"
    stray = re.findall("[\udc80-\udcff]", raw.decode("utf-8", errors="surrogateescape"))
    if 2 * len(stray) < len(raw.translate(None, bytes(range(128)))):
        return raw.decode("utf-8", errors="replace"), "damaged utf-8"
    return raw.decode("cp1252", errors="replace"), "cp1252"


def _read_bytes(path: Path) -> bytes:
    """The bytes of a CSV file, or a DataError saying what the path holds instead."""
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a CSV file. Pass the CSV file itself, "
                        f"e.g. {path / RAW_DATA.name}.")
    if not path.is_file():
        hint = DOWNLOAD_HINT if path.name == RAW_DATA.name else "Check the path."
        raise DataError(f"Data file not found: {path}. {hint}")
    raw = path.read_bytes()
    head = raw[:4096]
    if not raw.removeprefix(b"\xef\xbb\xbf").strip():
        raise DataError(f"{path} is empty. Re-download it; the original is 106,270 bytes.")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or max(head[::2].count(0),
                                                          head[1::2].count(0)) > len(head) // 4:
        raise DataError(f"{path} is UTF-16 text (Excel's 'Unicode Text'), not a CSV this "
                        "project reads. Save it as 'CSV UTF-8 (Comma delimited)', or convert "
                        "it: iconv -f UTF-16 -t UTF-8 in.csv > out.csv.")
    if head.startswith(b"PK\x03\x04"):
        raise DataError(f"{path} is a ZIP archive. Unzip it and pass the CSV inside.")
    if b"\x00" in head:
        raise DataError(f"{path} is not a CSV text file (it holds binary data). "
                        "Pass the CSV file itself.")
    return raw


def load_raw(path=None, *, target=True) -> pd.DataFrame:
    """Read the Kaggle CSV (or a common re-save) as text columns; the file is never modified.
    target=False: rows to predict: no streams column needed, nor platform counts (the
    forecaster has no use for them; predict_streams says when a model needs them)."""
    path = resolve_run(path).data_path if path is None else Path(path).expanduser()
    text, encoding = _decode(_read_bytes(path))
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                            na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} could not be parsed as CSV ({exc}). "
                        "Pass the original comma-separated file.") from None
    frame = frame.loc[:, ~(frame.columns.str.startswith("Unnamed:") & frame.isna().all())]
    frame.columns = frame.columns.str.strip().str.removeprefix("\ufeff")
    required = [c for c in REQUIRED_COLUMNS if target or c not in [TARGET, *PLATFORM_COLUMNS]]
    missing = [c for c in required if c not in frame.columns]
    if len(missing) == len(required):
        raise DataError(f"{path} does not look like the Spotify 2023 CSV: none of the expected "
                        f"columns (e.g. {', '.join(REQUIRED_COLUMNS[:3])}) is in its header.")
    if missing:
        raise DataError(f"{path} lacks required column(s): {', '.join(missing)}. "
                        "Use a file with the schema of the Kaggle 'Top Spotify Songs 2023' data.")
    if frame.empty:
        raise DataError(f"{path} has a header but no data rows.")
    clash = [c for c in RESERVED_COLUMNS if c in frame.columns]
    if clash:
        raise DataError(f"{path} has column(s) named {', '.join(clash)}, which cleaning adds "
                        "itself. Rename or remove them.")
    extra = [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    frame = frame[[c for c in REQUIRED_COLUMNS if c in frame.columns] + extra]
    frame.attrs["encoding"] = encoding  # clean() logs a guessed CP1252
    return frame


def check_data(path) -> None:
    """Check up front that a CSV loads, cleans and has enough songs for the series (DataError)."""
    split_train_test(add_features(clean(load_raw(path)).data))


@dataclass
class CleanResult:
    """The cleaned frame plus one record per cleaning step (what was done, to how many rows)."""

    data: pd.DataFrame
    steps: list = field(default_factory=list)
    dropped: pd.DataFrame | list = field(default_factory=list)  # removed rows, with reasons
    reference_date: pd.Timestamp | None = None
    blank_key: str = "C"  # what a blank key means in this file (see clean)

    def log(self, step: str, rows: int, action: str) -> None:
        self.steps.append({"step": step, "rows": int(rows), "action": action})

    def drop(self, df: pd.DataFrame, mask, step: str, action: str) -> pd.DataFrame:
        """df without the rows of mask; they are kept in `dropped` with the step as reason."""
        self.dropped.append(df.loc[mask, ["raw_row", *NAME_COLUMNS]].assign(reason=step))
        self.log(step, mask.sum(), action)
        return df[~mask]

    def steps_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps, columns=["step", "rows", "action"])


def parse_numbers(values: pd.Series) -> pd.Series:
    """Text to float: strips thousands separators and blanks; unparseable text becomes NaN."""
    text = values.astype("str").str.strip().str.replace(",", "", regex=False)
    return pd.to_numeric(text.where(values.notna()), errors="coerce")


def parse_fields(df: pd.DataFrame, blank_key="C"):
    """Parse raw text fields as clean() and predict_streams both do: numbers without thousands
    separators, a blank key read as blank_key. Returns the parsed frame and per column a mask
    of present but invalid values (no finite number, an unknown key or mode)."""
    out, bad = df.copy(), {}
    for col in [c for c in NUMERIC_COLUMNS if c in df]:
        numbers = parse_numbers(df[col])
        out[col] = numbers.where(np.isfinite(numbers))
        bad[col] = out[col].isna() & df[col].notna()
    for col, allowed in [("key", [*KEYS, "unknown"]), ("mode", MODES)]:
        if col in df:
            out[col] = df[col].fillna(blank_key) if col == "key" else df[col]
            bad[col] = out[col].notna() & ~out[col].isin(allowed)
    return out, bad


def typed_categories(df: pd.DataFrame) -> pd.DataFrame:
    """key and mode as categoricals with fixed categories (the same one-hot columns always)."""
    return df.assign(key=pd.Categorical(df["key"], categories=[*KEYS, "unknown"]),
                     mode=pd.Categorical(df["mode"], categories=MODES))


def _name_key(names: pd.Series) -> pd.Series:
    """Names compared as keys: case, spacing, punctuation and encoding damage ignored."""
    return names.astype("str").str.casefold().str.replace(r"[\W_]+", "", regex=True)


def pair_key(frame: pd.DataFrame) -> pd.Series:
    """A normalized track/artist key."""
    return _name_key(frame[NAME_COLUMNS[0]]) + "|" + _name_key(frame[NAME_COLUMNS[1]])


def release_dates(df: pd.DataFrame) -> pd.Series:
    """Release dates from the numeric year/month/day columns (NaT where impossible)."""
    parts = {"year": df["released_year"], "month": df["released_month"], "day": df["released_day"]}
    return pd.to_datetime(pd.DataFrame(parts), errors="coerce")


def row_problems(parsed: pd.DataFrame, as_of=None) -> pd.DataFrame:
    """The rules a parsed row must meet, a boolean column per rule (True: broken), which clean()
    drops and predict_streams refuses: whole numbers within VALUE_RANGES; no placeholder year
    (before MIN_PLAUSIBLE_YEAR); a date that exists and is not after as_of (default today: a
    future date is a typo). Missing values break no rule here; the callers decide."""
    as_of = pd.Timestamp.today().normalize() if as_of is None else pd.Timestamp(as_of)
    rules = {}
    for col, (low, high) in VALUE_RANGES.items():
        if col in parsed:
            bounds = f"below {low:g}" if high == np.inf else f"outside {low:g}–{high:g}"
            rules[f"{col} {bounds} or not whole"] = parsed[col].notna() & ~(
                parsed[col].between(low, high) & (parsed[col] % 1 == 0))
    dates = release_dates(parsed)
    rules[f"release year before {MIN_PLAUSIBLE_YEAR}"] = (parsed["released_year"]
                                                          < MIN_PLAUSIBLE_YEAR)
    rules["impossible release date"] = dates.isna() & parsed[DATE_COLUMNS].notna().all(axis=1)
    rules[f"release date after {as_of:%Y-%m-%d}"] = dates > as_of
    return pd.DataFrame(rules, index=parsed.index)


def clean(raw: pd.DataFrame, as_of=None, min_streams=MIN_PLAUSIBLE_STREAMS,
          keep_repeat="more streams") -> CleanResult:
    """Clean a raw frame from load_raw; each step is logged with its row count, and dropped
    rows are kept in `dropped` with the reason. The reference date for song age is the newest
    release date kept. The two decisions that look at the target can be varied (notebook 06):
    min_streams, and which copy of a repeated pair is kept ("more streams", "first listed")."""
    df = raw.copy()
    df.insert(0, "raw_row", raw.index)  # traceability: the row's position in the raw file
    result = CleanResult(df)
    result.log("start", len(df), "rows in the raw file")
    df = _parse_values(_repair_names(df, result), result)
    problems = row_problems(df)
    ranged = problems.loc[:, problems.columns.str.endswith("or not whole")]
    if ranged.to_numpy().any():  # a negative count, a percentage above 100
        df = result.drop(df, ranged.any(axis=1), "values out of range", "dropped: " + "; ".join(
            f"{rule} ({n})" for rule, n in ranged.sum().items() if n))
    df = _drop_repeats_and_implausible(df, result, min_streams, keep_repeat)
    return _finish(df, result, len(raw), as_of)


def _repair_names(df: pd.DataFrame, result: CleanResult) -> pd.DataFrame:
    """Collapse each run of U+FFFD (undecodable bytes) to one; log a file read as CP1252."""
    if df.attrs.get("encoding") == "cp1252":
        accented = df[NAME_COLUMNS].apply(lambda s: s.str.contains(r"[^\x00-\x7f]", na=False))
        result.log("file encoding", accented.any(axis=1).sum(),
                   "read as CP1252: not UTF-8, and most of its non-ASCII bytes stand alone")
    damaged = df[NAME_COLUMNS].apply(lambda s: s.str.contains("\ufffd", na=False)).any(axis=1)
    for col in NAME_COLUMNS:
        df[col] = df[col].fillna("").str.replace(r"\ufffd+", "\ufffd", regex=True).str.strip()
    result.log("encoding damage in names", damaged.sum(),
               "kept; each run of lost characters marked once with \ufffd")
    return df


def _parse_values(df: pd.DataFrame, result: CleanResult) -> pd.DataFrame:
    """Numbers from text, the unreadable target dropped, blank keys filled, missing values."""
    n_sep = sum(int(df[c].str.contains(r"\d,\d", regex=True, na=False).sum())
                for c in NUMERIC_COLUMNS)
    has_c, no_key = (df["key"] == "C").any(), df["key"].isna()
    result.blank_key = "unknown" if has_c else "C"
    parsed, bad = parse_fields(df, result.blank_key)
    for col in NUMERIC_COLUMNS:
        present = bad[col] | parsed[col].notna()
        if bad[col].any() and (col != TARGET or bad[col].sum() > 0.5 * present.sum()):
            raise DataError(f"Column '{col}' holds {int(bad[col].sum())} value(s) that are not "
                            f"numbers, e.g. {df.loc[bad[col], col].iloc[0]!r}. Fix or blank them "
                            "in the CSV" + ("; the target must hold stream counts."
                                            if col == TARGET else "."))
    result.log("thousands separators", n_sep, "removed ('1,021' -> 1021)")
    df = result.drop(parsed, bad[TARGET], "corrupted streams value",
                     "dropped: the target is unreadable")
    no_target = df[TARGET].isna() | (df[TARGET] <= 0)
    if no_target.any():
        df = result.drop(df, no_target, "missing streams", "dropped: no target")
    if df.empty:
        raise DataError("No row has a usable 'streams' value (a positive number). "
                        "Check the column: it must hold total stream counts.")
    result.log("missing key", no_key[df.index].sum(),
               "filled with 'unknown' (key C occurs, so blanks are not C)" if has_c
               else "filled with 'C': no row states key C")
    result.log("missing in_shazam_charts", df["in_shazam_charts"].isna().sum(),
               "left missing; imputed inside each model's folds (median + missing flag)")
    incomplete = df[[c for c in NUMERIC_COLUMNS if c != "in_shazam_charts"]].isna().any(axis=1)
    if (incomplete | df["mode"].isna()).any():
        df = result.drop(df, incomplete | df["mode"].isna(), "missing numbers or mode",
                         "dropped: no safe default")
    for col, allowed in [("key", [*KEYS, "unknown"]), ("mode", MODES)]:
        if bad[col][df.index].any():
            unknown = bad[col][df.index]
            raise DataError(f"Column '{col}' holds {int(unknown.sum())} unknown value(s), e.g. "
                            f"{df.loc[unknown, col].iloc[0]!r}; allowed: {', '.join(allowed)}.")
    return df


def _drop_repeats_and_implausible(df: pd.DataFrame, result: CleanResult, min_streams,
                                  keep_repeat) -> pd.DataFrame:
    """Repeated track/artist pairs (by default the copy with more streams, the later
    snapshot), then implausible values."""
    if keep_repeat not in ("more streams", "first listed"):
        raise ValueError(f"keep_repeat={keep_repeat!r}: 'more streams' or 'first listed'.")
    key = pair_key(df)
    order = (df.sort_values([TARGET, "in_spotify_playlists"], ascending=False, kind="stable")
             .index if keep_repeat == "more streams" else df.index)
    repeated = pd.Series(key.loc[order].duplicated().to_numpy(), index=order).reindex(df.index)
    df = result.drop(df, repeated, "duplicate track/artist pairs",
                     f"dropped; of {key[key.duplicated(keep=False)].nunique()} repeated pairs "
                     "kept the " + ("row with more streams" if keep_repeat == "more streams"
                                    else "first listed row"))
    df = result.drop(df, df[TARGET] < min_streams,
                     f"streams below {min_streams:,}", "dropped: not a chart hit")
    old = f"release year before {MIN_PLAUSIBLE_YEAR}"  # a rule of row_problems
    return result.drop(df, row_problems(df)[old], old, "dropped: placeholder date")


def _finish(df: pd.DataFrame, result: CleanResult, n_start: int, as_of) -> CleanResult:
    """Impossible and future dates, types, song age from the reference date; the final log."""
    problems = row_problems(df, as_of)
    if problems["impossible release date"].any():
        df = result.drop(df, problems["impossible release date"], "impossible release dates",
                         "dropped")
    future = problems.iloc[:, -1][df.index]  # "release date after <as_of>"
    if future.any():
        df = result.drop(df, future, future.name, "dropped: in the future, a typo; not used "
                         "for the reference date (the latest date of the rows kept)")
    ints = dict.fromkeys([c for c in NUMERIC_COLUMNS if c != "in_shazam_charts"], "int64")
    df = typed_categories(df.assign(release_date=release_dates(df)).astype(ints))
    if df.empty:
        raise DataError("No rows are left after cleaning; check the file's contents.")
    result.reference_date = df["release_date"].max()
    df["days_since_release"] = (result.reference_date - df["release_date"]).dt.days
    result.data = df.reset_index(drop=True)
    result.dropped = pd.concat(result.dropped, ignore_index=True)
    result.log("end", len(result.data), f"clean rows ({n_start - len(result.data)} removed)")
    return result


@contextlib.contextmanager
def replacing(path):
    """Write to a temporary file beside `path` (yielded), then swap it in: a reader sees the
    old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_clean(result: CleanResult, path) -> Path:
    """Write cleaned data as CSV for the later notebooks; returns the path."""
    with replacing(path) as partial:
        result.data.to_csv(partial, index=False, date_format="%Y-%m-%d")
    return Path(path)


def load_songs(run: Run) -> pd.DataFrame:
    """The run's cleaned songs (notebook 02 writes them) with the derived inputs; if missing,
    rebuilt from the data file with clean(), as notebook 02 does, with a line saying so."""
    path = run.processed_path
    if not path.is_file():
        result = clean(load_raw(run.data_path))
        save_clean(result, path)
        print(f"Cleaned data not found at {path}: rebuilt it from {run.data_path.name} with "
              f"clean(), as notebook 02 does ({len(result.data)} songs).")
    songs = pd.read_csv(path, parse_dates=["release_date"], encoding="utf-8",
                        keep_default_na=False, na_values=[""])
    return add_features(typed_categories(songs))


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------

PLATFORM_COLUMNS = [
    "in_spotify_playlists", "in_spotify_charts", "in_apple_playlists", "in_apple_charts",
    "in_deezer_playlists", "in_deezer_charts", "in_shazam_charts",
]
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


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

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


def paired_difference(a, b, splits) -> dict:
    """The series' evidence rule, the corrected resampled t-test (Nadeau & Bengio 2003): scores
    a − b fold by fold. Folds share training rows, so the mean's variance is
    (1/J + n_validation/n_train)·s², not s²/J, and mean/SE follows Student's t with J − 1
    degrees of freedom: the difference, its SE, 95 % t interval, t, p and folds won."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    folds, mean = len(d), float(d.mean())
    share = np.mean([len(va) / len(tr) for tr, va in splits[:folds]])
    se = float(np.sqrt((1 / folds + share) * d.var(ddof=1))) if folds > 1 else np.nan
    t = mean / se if se > 0 else np.nan  # NaN: one fold, or no difference at all
    half = stats.t.ppf(0.975, folds - 1) * se if folds > 1 else np.nan
    return {"difference": mean, "se": se, "ci_low": mean - half, "ci_high": mean + half,
            "t": float(t), "p_value": float(2 * stats.t.sf(abs(t), max(folds - 1, 1))),
            "folds_won": f"{(d > 0).sum()} of {folds}"}


def holm(p_values, alpha=0.05) -> np.ndarray:
    """Holm's correction for a family of m comparisons (scipy has none): the smallest p against
    alpha/m, the next against alpha/(m − 1), ..., until one fails; True where p counts."""
    p = np.asarray(p_values, dtype=float)
    passed = np.zeros(len(p), dtype=bool)
    for rank, i in enumerate(np.argsort(p)):
        if not p[i] <= alpha / (len(p) - rank):  # NaN (a single fold) never passes
            break
        passed[i] = True
    return passed


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


def save_metrics(run: Run, notebook: str, tables: dict, **extra) -> Path:
    """Write a notebook's metrics (tables rounded to 6 decimals) as JSON."""
    payload = {"notebook": notebook, "data": run.data_path.name, "real_data": run.is_real,
               "synthetic": run.is_synthetic, **extra,
               **{name: json.loads(table.round(6).to_json(orient="records"))
                  for name, table in tables.items()}}
    with replacing(run.metrics_dir / f"{notebook}.json") as partial:
        partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return run.metrics_dir / f"{notebook}.json"


def load_metrics(run: Run, notebook: str) -> dict:
    """An earlier notebook's metrics; on the real file the committed ones if this run has none."""
    path = run.metrics_dir / f"{notebook}.json"
    committed = REPORTS_DIR / "metrics" / path.name
    if not path.is_file() and run.is_real and committed.is_file():
        print(f"Metrics of {notebook} not found at {path}: using the committed {committed}.")
        path = committed
    if not path.is_file():
        raise DataError(f"Metrics of {notebook} not found at {path}. Run that notebook first.")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


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
        "ridge": lambda: GridSearchCV(Ridge(), {"alpha": np.logspace(-2, 3, 11)},
                                      scoring="neg_mean_squared_error",
                                      cv=GroupKFold(5, shuffle=True, random_state=seed)),
        "hgb": lambda: HistGradientBoostingRegressor(random_state=seed, monotonic_cst=monotone),
        "rf": lambda: RandomForestRegressor(random_state=seed, monotonic_cst=monotone),
    }
    if name not in estimators:
        raise ValueError(f"Unknown baseline {name!r}; choose from {list(estimators)}.")
    return Pipeline([("prep", make_preprocessor(feature_set)),
                     (name, estimators[name]().set_params(**params))])


# The original report's network and grid; QUICK_GRID for smoke runs (two configurations).
ORIGINAL_MLP = {"learning_rate": 0.001, "dropout": 0.2, "neurons": 64, "batch_size": 32,
                "epochs": 100}
ORIGINAL_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2, 0.3], "neurons": [64, 128],
                 "batch_size": [16, 32], "epochs": [50, 100]}
QUICK_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2], "neurons": [64],
              "batch_size": [32], "epochs": [5]}
STEPS_PER_EXECUTION = 512  # training steps per call into TensorFlow (docs/performance.md)


def build_mlp(n_features, neurons=64, dropout=0.2, learning_rate=1e-3, seed=42,
              steps_per_execution=1):
    """The original network, compiled: Dense(neurons, ReLU) → Dropout → Dense(neurons/2, ReLU)
    → Dropout → Dense(1), trained with Adam on the mean squared error. Every random layer gets
    its own seed, so the same arguments give the same network in any process or thread."""
    import keras

    def dense(units, i, **kwargs):
        return keras.layers.Dense(units, **kwargs,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed + i))

    model = keras.Sequential([
        keras.Input(shape=(n_features,)),
        dense(neurons, 1, activation="relu"),
        keras.layers.Dropout(dropout, seed=seed + 2),
        dense(neurons // 2, 3, activation="relu"),
        keras.layers.Dropout(dropout, seed=seed + 4),
        dense(1, 5),
    ])
    # jit_compile=False: XLA compiles every new model for seconds, more than a network this
    # small gains from it (docs/performance.md).
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse",
                  steps_per_execution=steps_per_execution, jit_compile=False)
    return model


# A new Keras model traces its training step on its first fit, about 1.8 s here: longer than
# 100 epochs of training (1 s). So each process keeps one compiled model per architecture and
# starts every fit from a new model's state (initial weights, dropout seeds, a new Adam state,
# the learning rate): the same numbers as a new model (tests/test_mlp.py), in half the time.
_compiled = functools.cache(build_mlp)
_FIT_LOCK = threading.Lock()  # Dask runs tasks in threads: one fit at a time per process


def _trainer(fresh, learning_rate, steps_per_execution):
    import keras

    trainer = _compiled(fresh.input_shape[1], fresh.layers[0].units, fresh.layers[1].rate,
                        steps_per_execution=steps_per_execution)
    trainer.set_weights(fresh.get_weights())
    for mine, new in zip(trainer.layers, fresh.layers):
        if isinstance(mine, keras.layers.Dropout) and mine.rate > 0:
            mine.seed_generator.state.assign(new.seed_generator.state)
    for variable in trainer.optimizer.variables:
        variable.assign(keras.ops.zeros_like(variable))
    trainer.optimizer.learning_rate.assign(learning_rate)
    return trainer


class KerasMLPRegressor(RegressorMixin, BaseEstimator):
    """build_mlp's network as a scikit-learn estimator. fit runs Keras's model.fit on a tf.data
    pipeline of the rows in a new order each epoch (numpy's generator seeded with random_state),
    in batches, all epochs in one pass (Keras's per-epoch overhead would cost ten times the
    training, docs/performance.md). With early_stopping: validation_fraction of the rows held
    out (whole groups, e.g. artists, when fit gets `groups`), epoch by epoch, the best weights
    kept (keras.callbacks.EarlyStopping with `patience`)."""

    def __init__(self, neurons=64, dropout=0.2, learning_rate=1e-3, batch_size=32, epochs=100,
                 early_stopping=False, validation_fraction=0.2, patience=10, random_state=42):
        self.neurons, self.dropout, self.learning_rate = neurons, dropout, learning_rate
        self.batch_size, self.epochs, self.early_stopping = batch_size, epochs, early_stopping
        self.validation_fraction, self.patience = validation_fraction, patience
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        import keras
        import tensorflow as tf

        X, y = validate_data(self, X, y, dtype="float32", y_numeric=True)
        y, rows, held = y.astype("float32").reshape(-1, 1), np.arange(len(X)), None
        if self.early_stopping:
            holdout = GroupShuffleSplit(1, test_size=self.validation_fraction,
                                        random_state=self.random_state)
            rows, held = next(holdout.split(X, y, rows if groups is None else groups))
        rng = np.random.default_rng(self.random_state)
        order = np.stack([rng.permutation(rows) for _ in range(self.epochs)])  # epochs × rows
        data = (tf.data.Dataset.from_tensor_slices(order)
                .flat_map(lambda epoch: tf.data.Dataset.from_tensor_slices(epoch)
                          .batch(self.batch_size))
                .map(lambda batch: (tf.gather(X, batch), tf.gather(y, batch))))
        steps = -(-len(rows) // self.batch_size)  # batches per epoch
        model = build_mlp(X.shape[1], self.neurons, self.dropout, seed=self.random_state)
        with _FIT_LOCK:
            if held is None:  # no per-epoch work: all epochs in one pass
                history = _trainer(model, self.learning_rate, STEPS_PER_EXECUTION).fit(
                    data, epochs=1, steps_per_epoch=steps * self.epochs, verbose=0,
                    shuffle=False)
            else:  # Keras's epochs, one call into TensorFlow each
                stop = keras.callbacks.EarlyStopping(patience=self.patience,
                                                     restore_best_weights=True)
                history = _trainer(model, self.learning_rate, steps).fit(
                    data, epochs=self.epochs, steps_per_epoch=steps, callbacks=[stop],
                    validation_data=(X[held], y[held]), verbose=0, shuffle=False)
            self.weights_, self.history_ = history.model.get_weights(), history.history
        self.validation_rows_ = held  # the rows early stopping watched (None: no holdout)
        return self

    def predict(self, X):  # the fitted state is numpy arrays: it pickles without Keras
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # a new batch shape retraces: no notice in outputs
        check_is_fitted(self)
        X = validate_data(self, X, dtype="float32", reset=False)
        with _FIT_LOCK:
            model = _compiled(X.shape[1], self.neurons, self.dropout)
            model.set_weights(self.weights_)
            return model.predict_on_batch(X).ravel()


def make_mlp(feature_set: str, seed=42, **params):
    """The original network as a Pipeline: make_preprocessor → KerasMLPRegressor, its target
    standardized on the training rows (TransformedTargetRegressor). Early stopping by artist:
    make_mlp(fs, early_stopping=True).fit(X, y, mlp__groups=artist_key(rows))."""
    network = KerasMLPRegressor(**{**ORIGINAL_MLP, **params}, random_state=seed)
    return Pipeline([("prepare", make_preprocessor(feature_set)),
                     ("mlp", TransformedTargetRegressor(network, transformer=StandardScaler()))])


def grid_param(name: str) -> str:
    """The GridSearchCV parameter name of a KerasMLPRegressor knob inside make_mlp's pipeline."""
    return f"mlp__regressor__{name}"


TIE_R2 = 0.01  # mean CV R² differences below this are not evidence (SE of a 5-fold mean ≈ 0.02)


def cheapest_within(tie=TIE_R2):
    """A GridSearchCV `refit` rule: of the configurations within `tie` of the best mean CV R²,
    the cheapest to train (epochs × steps per epoch × width), then the better scoring. Unlike
    the plain best, it does not flip between scores that differ by noise such as another CPU's
    rounding (docs/reproducibility.md)."""
    def choose(cv_results) -> int:
        results = pd.DataFrame(cv_results)
        knob = {k: results[f"param_{grid_param(k)}"].astype(float)
                for k in ["epochs", "batch_size", "neurons"]}
        cost = knob["epochs"] / knob["batch_size"] * knob["neurons"]
        tied = results["mean_test_score"] >= results["mean_test_score"].max() - tie
        order = pd.DataFrame({"cost": cost, "score": -results["mean_test_score"]})[tied]
        return int(order.sort_values(["cost", "score"], kind="stable").index[0])

    return choose


@contextlib.contextmanager
def parallel_backend(scheduler=None, timeout="20s"):
    """Where joblib-parallel work (GridSearchCV, cross_validate) runs: local processes, or a
    Dask cluster at `scheduler` (or DASK_SCHEDULER_ADDRESS); unreachable: an error."""
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        yield "local processes"
        return
    from dask.distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except OSError as exc:
        raise DataError(f"Cannot reach the Dask scheduler at {address} ({exc}). Start it, fix "
                        "the address, or unset it to run on local processes.") from None
    with client, joblib.parallel_backend("dask"):
        yield f"Dask cluster at {address} ({len(client.scheduler_info()['workers'])} workers)"


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:10}| {n_fmt}/{total_fmt} {unit}"  # no timings


class FitProgress:
    """A GridSearchCV callback (sklearn.callback's FitCallback protocol): a tqdm bar of the
    finished fits, which worker processes report over a local socket (multiprocessing's
    connection). No public route exists: scikit-learn's ProgressBar draws with rich (no bar in
    a papermill kernel) and its transport is private; tests/test_mlp.py notices a change."""

    def setup(self, estimator, context):
        self.key, bars = os.urandom(16), []
        self.listener = connection.Listener(("127.0.0.1", 0), authkey=self.key)
        self.address = self.listener.address

        def serve():  # a connection per finished fit; None (from teardown) ends it
            while (total := self.listener.accept().recv()) is not None:
                bars[:] = bars or [tqdm(total=total, desc="grid search", unit="fits",
                                        ncols=100, bar_format=BAR_FORMAT)]
                bars[0].update()
            for bar in bars:
                bar.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, **kwargs):
        if context.task_name == "candidate-split-evaluation":  # one candidate on one fold
            self.send(context.parent.max_subtasks)

    def send(self, message):  # from a remote Dask worker, which cannot reach us: nothing
        with contextlib.suppress(OSError), connection.Client(self.address, authkey=self.key) as c:
            c.send(message)

    def teardown(self, estimator, context):
        self.send(None)
        self.thread.join(timeout=10)
        self.listener.close()

    def __getstate__(self):  # what the workers get: where to report
        return {"address": self.address, "key": self.key}


# ----------------------------------------------------------------------------------------------
# Saved models and predictions
# ----------------------------------------------------------------------------------------------

MODEL_FOLDERS = {"full": "final", "pre-release": "pre-release"}  # notebook 06 saves both


# skops.io loads only the types it is told to trust, unlike pickle. Beyond its defaults, the
# series' saved pipelines hold these (tests/test_models.py fails, naming the type, if a
# library release renames one); a file that holds any other type is not loaded.
SAVED_TYPES = {"helpers.exact_log", "helpers.KerasMLPRegressor", "numpy.dtype",
               "sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch",  # VotingRegressor's
               "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}


def save_model(pipeline, folder, feature_set: str, songs: pd.DataFrame, residuals,
               quick=False) -> Path:
    """Save a fitted pipeline (skops.io) with what predict_streams needs: the feature set, what
    a blank key meant, the reference date for song age, the cross-validated residuals (log10)
    for intervals; `quick` marks a smoke-run model, never picked by default."""
    import skops.io

    folder = Path(folder)
    with replacing(folder / "model.skops") as partial:
        skops.io.dump(pipeline, partial)
    steps = getattr(pipeline, "steps", [[type(pipeline).__name__]])  # a Pipeline's last step
    info = {"feature_set": feature_set, "model": steps[-1][0],
            "blank_key": "unknown" if (songs["key"] == "unknown").any() else "C",
            "reference_date": str(songs["release_date"].max().date()), "quick": bool(quick),
            "residuals": np.sort(np.round(np.asarray(residuals, dtype=float), 6)).tolist()}
    with replacing(folder / "model.json") as partial:
        partial.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return folder


def model_folder(inputs: str, model_dir=None) -> Path:
    """The folder of the saved model predict_streams would use (DataError if none)."""
    if inputs not in MODEL_FOLDERS:
        raise ValueError(f"inputs={inputs!r}: choose 'full' or 'pre-release'.")
    name = MODEL_FOLDERS[inputs]  # default: the notebooks' output, then `make run`'s
    for folder in [Path(model_dir)] if model_dir is not None else [
            resolve_run().models_dir / name, BUILD_DIR / "run" / "models" / name]:
        info = folder / "model.json"
        if (folder / "model.skops").is_file() and info.is_file() and (
                model_dir is not None or not json.loads(info.read_text())["quick"]):
            return folder
    raise DataError(f"No saved {inputs} (non-QUICK) model found. Run notebook 06_results "
                    "first (or the series with `make run`), or pass model_dir=.")


def load_model(folder):
    """A saved pipeline, read by skops.io trusting only SAVED_TYPES (DataError otherwise)."""
    import skops.io

    path = Path(folder) / "model.skops"
    found = skops.io.get_untrusted_types(file=path)
    if set(found) - SAVED_TYPES:
        raise DataError(f"{path} holds types the series never saves "
                        f"({', '.join(sorted(set(found) - SAVED_TYPES))}), so it is not loaded. "
                        "Use a model made by this series (notebook 06 or `make run`).")
    return skops.io.load(path, trusted=found)


def predict_streams(frame: pd.DataFrame, model_dir=None, inputs="full", age_days=None,
                    interval=None):
    """Predicted total streams for rows in the raw file's schema (load_raw(path, target=False))
    from a model notebook 06 saved (read with skops.io, trusting only the types the series
    saves: see load_model).
    - inputs="full": the final model, which needs the playlist and chart counts (known once a
      song is out); "pre-release": the forecaster (audio, key, mode, artist count, release).
    - The prediction is 10^(predicted log10 streams): a median, not a mean (notebook 06).
    - Song age: the days from the release date to the model's reference date (the newest
      release in its data; later releases are refused), or age_days=N for every row.
    - interval=0.8: a DataFrame of predicted, lower and upper (a prediction interval from the
      model's cross-validated residuals, coverage measured in notebook 06); else a Series.
    Rows that clean() would drop or refuse are refused with one DataError naming each row."""
    folder = model_folder(inputs, model_dir)
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError("predict_streams needs a non-empty DataFrame with the CSV's columns.")
    if age_days is not None and not (_is_whole(age_days) and age_days >= 0):
        raise ValueError(f"age_days={age_days!r}: a whole number of days, 0 or more.")
    if interval is not None and not 0 < interval < 1:
        raise ValueError(f"interval={interval!r}: a coverage between 0 and 1, e.g. 0.8.")
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    rows = prepare_rows(frame, info, age_days)[feature_columns(info["feature_set"])]
    log10 = np.asarray(load_model(folder).predict(rows), dtype=float)
    predicted = pd.Series(10 ** log10, index=frame.index, name="predicted")
    if interval is None:
        return predicted
    res = np.asarray(info["residuals"])  # split-conformal order statistics: each bound misses
    n, alpha = len(res), 1 - interval  # at most alpha/2 of new songs like the training ones
    low = res[max(int(np.floor((n + 1) * alpha / 2)) - 1, 0)]
    high = res[min(int(np.ceil((n + 1) * (1 - alpha / 2))) - 1, n - 1)]
    return pd.DataFrame({"predicted": predicted, "lower": 10 ** (log10 + low),
                         "upper": 10 ** (log10 + high)}, index=frame.index)


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


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _count_label(value: float) -> str:
    """1_000_000 -> '1 M', 30_000_000 -> '30 M', 2e9 -> '2 B'."""
    for size, unit in [(1e9, "B"), (1e6, "M"), (1e3, "k")]:
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def log_axis(axis, label="streams", max_ticks=4) -> None:
    """Label a matplotlib axis that holds log10 values: streams (10 M, 100 M, 1 B, with 3 × 10^k
    between them where that leaves at most max_ticks ticks), or with a label that starts with
    "actual ÷" a ratio (×0.3, ×1, ×3)."""
    lo, hi = axis.get_view_interval()
    ratio = label.startswith("actual ÷")
    for steps in [(1, 3), (1,)]:
        ticks = [t for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)
                 for t in np.log10(np.array(steps) * 10.0 ** e) if lo <= t <= hi]
        if len(ticks) <= max_ticks or ratio:
            break
    axis.set_major_locator(FixedLocator(ticks[::-(-len(ticks) // max_ticks) or 1]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"×{10 ** v:.2g}" if ratio
                                           else _count_label(10 ** v)))
    axis.set_label_text(f"{label} (log scale)")


def save_figure(fig, run: Run, name: str) -> None:
    """Save a figure as PNG in the run's figures folder (the README shows the committed ones)."""
    with replacing(run.figures_dir / f"{name}.png") as partial:  # no version stamp: the same
        fig.savefig(partial, metadata={"Software": None})  # bytes every run
