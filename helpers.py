"""Shared code for the Spotify-streams notebook series.

Sections: paths · data · features · evaluation · models · plots.
The notebooks import what they need by name (``from helpers import load_raw, clean``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

# Before TensorFlow is ever imported: silence its C++ start-up log lines (they would land in
# notebook outputs and break nbval comparisons) and keep oneDNN's graph rewrites off (their
# notice would land in outputs too; matrix products still use oneDNN's sgemm, see below).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# TensorFlow's matrix products still run on oneDNN's sgemm, which picks its kernel by the CPU's
# instruction set (AVX-512 machines sum in another order than AVX2 ones). Capping it at AVX2
# gives AVX-512 CPUs the kernel of an AVX2 CPU (this machine: identical numbers with the cap);
# older CPUs keep theirs. Read once, before the first matrix product.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
# One TensorFlow thread per process: the matrices here are too small to split, and the series
# runs fits in parallel processes instead (n_jobs). Measured on 4 fits of 100 epochs: 16 % less
# wall time and 27 % less CPU time than TF's default pools, bit-identical predictions; and
# idle pool threads no longer spin against the other process on a busy 2-core machine.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

# And one OpenMP/BLAS thread per process (gradient boosting, numpy): on data this small a
# second thread costs more than it brings, and beside another busy process its threads spin.
# Measured, 15 HGB fits: 5.2 s with two OpenMP threads, 3.8 s with one; next to a busy loop
# 16.0 s against 4.0 s; identical scores. The variable covers libraries loaded later (and
# child processes); threadpool_limits those a notebook loaded before importing helpers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))

# joblib's loky replaces a worker whose memory grew past 300 MB (TensorFlow's, after a few
# fits) and reports its own recycling as "A worker stopped ...": a known false alarm
# (joblib/joblib#869, fixed in loky#641, not yet in the joblib pinned here). Jobs are not lost;
# a worker that really dies still raises TerminatedWorkerError.
warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given",
                        category=UserWarning)

# ----------------------------------------------------------------------------------------------
# Paths
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
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Run:
    """Where one run of the series reads its data and writes its outputs."""

    data_path: Path
    output_dir: Path
    metrics_dir: Path
    is_real: bool
    is_synthetic: bool

    @property
    def processed_path(self) -> Path:
        return self.output_dir / "processed" / "spotify_clean.csv"

    @property
    def models_dir(self) -> Path:
        return self.output_dir / "models"

    @property
    def figures_dir(self) -> Path:
        return self.metrics_dir.parent / "figures"


def resolve_run(data_path=None, output_dir=None, quick=False) -> Run:
    """Resolve the data file and output folders of a run (defaults: real file, else sample).
    A quick (smoke) run on the real file never writes the committed reports/: by default it
    goes to build/real-quick/."""
    if data_path is None:
        data_path = RAW_DATA if RAW_DATA.exists() else SAMPLE_DATA
    data_path = Path(data_path).expanduser().resolve()
    is_real = data_path.is_file() and file_sha256(data_path) == REAL_SHA256
    is_synthetic = data_path == SAMPLE_DATA.resolve()
    if output_dir is not None:
        out = Path(output_dir).expanduser().resolve()
        return Run(data_path, out, out / "metrics", is_real, is_synthetic)
    if is_real and quick:
        out = BUILD_DIR / "real-quick"
        return Run(data_path, out, out / "metrics", True, False)
    if is_real:  # the committed results: metrics in reports/, derived data out of git
        reports = Path(os.environ.get("SERIES_REPORTS_DIR") or REPORTS_DIR)  # tests: a copy
        return Run(data_path, BUILD_DIR / "real", reports / "metrics", True, False)
    out = BUILD_DIR / ("synthetic" if is_synthetic else data_path.stem)
    return Run(data_path, out, out / "metrics", is_real, is_synthetic)


def _is_whole(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


PARAMETER_RULES = {  # notebook parameter: (test, what it must be)
    "QUICK": (lambda v: isinstance(v, bool), "True or False"),
    "SEED": (lambda v: _is_whole(v) and 0 <= v < 2**32, "a whole number from 0 to 2**32 - 1"),
    "N_JOBS": (lambda v: _is_whole(v) and v >= 1, "a positive whole number"),
    "DATA_PATH": (lambda v: v is None or isinstance(v, str | os.PathLike) and str(v).strip(),
                  "None or a file path"),
    "OUTPUT_DIR": (lambda v: v is None or isinstance(v, str | os.PathLike) and str(v).strip(),
                   "None or a folder path"),
    "DASK_SCHEDULER": (lambda v: v is None or isinstance(v, str) and v.strip(),
                       "None or a scheduler address"),
}


def check_parameters(**parameters) -> None:
    """Check a notebook's parameters (papermill injects them as given: `-p QUICK yes` is the
    text 'yes') against PARAMETER_RULES; a DataError names each wrong one."""
    unknown = [name for name in parameters if name not in PARAMETER_RULES]
    if unknown:
        raise TypeError(f"check_parameters: unknown parameter(s) {', '.join(unknown)}")
    wrong = [f"{name} must be {PARAMETER_RULES[name][1]}, not {value!r} ({type(value).__name__})"
             for name, value in parameters.items() if not PARAMETER_RULES[name][0](value)]
    if wrong:
        raise DataError("Bad notebook parameter(s): " + "; ".join(wrong) + ". With papermill: "
                        "-p QUICK True -p SEED 42 (run_series.py: --quick, --seed 42).")


def data_banner(run: Run) -> str:
    """A one-line (or empty) warning to show at the top of a notebook about the data used."""
    if run.is_synthetic:
        return (
            "⚠ SYNTHETIC SAMPLE: every number below comes from a generated sample, not from "
            "the Kaggle file, and says nothing about real songs. " + DOWNLOAD_HINT
        )
    if not run.is_real:
        return f"Note: running on {run.data_path.name}, not the original Kaggle file."
    return ""


def show_banner(run: Run) -> None:
    """Show which data a notebook runs on; a loud warning for the synthetic sample."""
    text = data_banner(run)
    if run.is_real:
        print(f"Data: {run.data_path.name}, the original Kaggle file (sha256 verified).")
    else:
        from IPython.display import Markdown, display

        display(Markdown(f"> **{text}**"))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class DataError(ValueError):
    """The input data cannot be used; the message names the problem and the fix."""


TARGET = "streams"
NAME_COLUMNS = ["track_name", "artist(s)_name"]
DATE_COLUMNS = ["released_year", "released_month", "released_day"]
AUDIO_NUMERIC = [
    "bpm", "danceability_%", "valence_%", "energy_%", "acousticness_%",
    "instrumentalness_%", "liveness_%", "speechiness_%",
]
KEYS = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
MODES = ["Major", "Minor"]
REQUIRED_COLUMNS = [  # the original file's order
    "track_name", "artist(s)_name", "artist_count", "released_year", "released_month",
    "released_day", "in_spotify_playlists", "in_spotify_charts", "streams",
    "in_apple_playlists", "in_apple_charts", "in_deezer_playlists", "in_deezer_charts",
    "in_shazam_charts", "bpm", "key", "mode", *AUDIO_NUMERIC[1:],
]
NUMERIC_COLUMNS = [c for c in REQUIRED_COLUMNS if c not in [*NAME_COLUMNS, "key", "mode"]]
MIN_PLAUSIBLE_STREAMS = 100_000  # a chart hit below this is a typo (see notebook 02)
MIN_PLAUSIBLE_YEAR = 1940  # earlier release years in this list are placeholders (notebook 02)
VALUE_RANGES = {  # whole numbers within these bounds, or a row is unusable (see row_problems)
    "artist_count": (1, np.inf), "bpm": (20, 400),
    **{c: (0, np.inf) for c in NUMERIC_COLUMNS if c.startswith("in_")},
    **dict.fromkeys(AUDIO_NUMERIC[1:], (0, 100)),
}


def _decode(raw: bytes) -> tuple[str, str]:
    """Bytes to text, and the encoding read: 'utf-8' (with or without BOM), 'damaged utf-8'
    or 'cp1252'. The encoding that explains most of the file wins: if most non-ASCII bytes form
    UTF-8 characters (the original file: ~87 %), it is UTF-8 with broken bytes, each marked
    U+FFFD; if most stand alone, it is a CP1252/Latin-1 re-save, whatever a few pairs of
    accented characters ("é’") happen to look like."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
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
    if not raw.removeprefix(b"\xef\xbb\xbf").strip():
        raise DataError(f"{path} is empty. Re-download it; the original is 106,270 bytes.")
    head = raw[:4096]
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


RESERVED_COLUMNS = ["raw_row", "release_date", "days_since_release", "release_weekday"]


def load_raw(path=None, *, target=True) -> pd.DataFrame:
    """Read the Kaggle CSV (any common re-save of it) as text columns, never modifying the file.
    target=False: rows to predict, which need no 'streams' column (see predict_streams)."""
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
    required = [c for c in REQUIRED_COLUMNS if target or c != TARGET]
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


def describe_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """Per raw column: missing values, how many parse as numbers, and an example that doesn't."""
    rows = []
    for col in raw.columns:
        values = raw[col].dropna()
        as_number = pd.to_numeric(values, errors="coerce")
        bad = values[as_number.isna()]
        rows.append({"column": col, "missing": int(raw[col].isna().sum()),
                     "numeric": int(as_number.notna().sum()), "not numeric": len(bad),
                     "example not numeric": (bad.iloc[0][:40] if len(bad) and col not in
                                             NAME_COLUMNS else "")})  # no song names shown
    return pd.DataFrame(rows).set_index("column")


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
        """The steps as a table for display."""
        return pd.DataFrame(self.steps, columns=["step", "rows", "action"])


def parse_numbers(values: pd.Series) -> pd.Series:
    """Text to float: strips thousands separators and blanks; unparseable text becomes NaN."""
    text = values.astype("str").str.strip().str.replace(",", "", regex=False)
    return pd.to_numeric(text.where(values.notna()), errors="coerce")


def parse_fields(df: pd.DataFrame, blank_key="C"):
    """Parse raw text fields, the one way clean() and predict_streams share: numbers without
    thousands separators, a blank key read as blank_key. Returns the parsed frame and, per
    column, a mask of values that are present but invalid (not a finite number: 'inf' is
    invalid too; an unknown key or mode); invalid numbers become NaN."""
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


def pair_key(frame: pd.DataFrame) -> pd.Series:
    """A normalized track/artist key: case, spacing and encoding damage ignored."""
    parts = [_name_key(frame[c]) for c in NAME_COLUMNS]
    return parts[0] + "|" + parts[1]


def _name_key(names: pd.Series) -> pd.Series:
    """Names compared as keys: case, spacing, punctuation and encoding damage ignored."""
    return names.astype("str").str.casefold().str.replace(r"[\W_]+", "", regex=True)


def release_dates(df: pd.DataFrame) -> pd.Series:
    """Release dates from the numeric year/month/day columns (NaT where impossible)."""
    parts = {"year": df["released_year"], "month": df["released_month"], "day": df["released_day"]}
    return pd.to_datetime(pd.DataFrame(parts), errors="coerce")


def row_problems(parsed: pd.DataFrame, as_of=None) -> pd.DataFrame:
    """The rules a parsed row must meet, one boolean column per rule (True: broken), shared by
    clean(), which drops such rows, and predict_streams, which refuses them:
    - each VALUE_RANGES column holds a whole number within its bounds (a count of -1 would
      break log1p, a percentage of 1e6 gives nonsense);
    - released_year is not before MIN_PLAUSIBLE_YEAR (earlier years are placeholders);
    - the date exists, and is not after as_of (default: today, the day the rules run): a
      future date is a typo, and would otherwise become everyone's reference for song age.
    Missing values break no rule here; the callers decide about them."""
    as_of = pd.Timestamp.today().normalize() if as_of is None else pd.Timestamp(as_of)
    rules = {}
    for col, (low, high) in VALUE_RANGES.items():
        if col in parsed:
            values = parsed[col]
            bounds = f"below {low:g}" if high == np.inf else f"outside {low:g}–{high:g}"
            rules[f"{col} {bounds} or not whole"] = (
                values.notna() & ~(values.between(low, high) & (values % 1 == 0)))
    dates = release_dates(parsed)
    rules[f"release year before {MIN_PLAUSIBLE_YEAR}"] = (parsed["released_year"]
                                                          < MIN_PLAUSIBLE_YEAR)
    rules["impossible release date"] = dates.isna() & parsed[DATE_COLUMNS].notna().all(axis=1)
    rules[f"release date after {as_of:%Y-%m-%d}"] = dates > as_of
    return pd.DataFrame(rules, index=parsed.index)


def clean(raw: pd.DataFrame, as_of=None, min_streams=MIN_PLAUSIBLE_STREAMS,
          keep_repeat="more streams") -> CleanResult:
    """Clean a raw frame from load_raw; every step is recorded with its row count.

    Rows that break a rule of row_problems are dropped, logged and kept in `dropped`: values
    out of range, placeholder years, impossible dates, and release dates after as_of (default:
    today). The reference date for song age is the latest release date of the kept rows: the
    latest plausible one, which a row dated in the future cannot move. The two decisions that
    look at the target can be varied to measure their effect (notebook 06): min_streams, and
    which copy of a repeated track/artist pair is kept ("more streams" or "first listed")."""
    df = raw.copy()
    df.insert(0, "raw_row", raw.index)  # traceability: the row's position in the raw file
    result = CleanResult(df)
    result.log("start", len(df), "rows in the raw file")
    df = _repair_names(df, result)
    df = _parse_values(df, result)
    df = _drop_out_of_range(df, result)
    df = _drop_repeats_and_implausible(df, result, min_streams, keep_repeat)
    return _finish(df, result, len(raw), as_of)


def _repair_names(df: pd.DataFrame, result: CleanResult) -> pd.DataFrame:
    """Undecodable bytes became U+FFFD: collapse each run to one marker. A file read as CP1252
    (see _decode) is logged as such, with its rows holding non-ASCII names."""
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


def _drop_out_of_range(df: pd.DataFrame, result: CleanResult) -> pd.DataFrame:
    """Rows with a value outside VALUE_RANGES (a negative count, a percentage above 100)."""
    problems = row_problems(df)
    ranged = problems.loc[:, problems.columns.str.endswith("or not whole")]
    if not ranged.to_numpy().any():
        return df
    action = "dropped: " + "; ".join(f"{rule} ({n})" for rule, n in ranged.sum().items() if n)
    return result.drop(df, ranged.any(axis=1), "values out of range", action)


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
    dates = release_dates(df)
    ints = [c for c in NUMERIC_COLUMNS if c != "in_shazam_charts"]
    df = typed_categories(df.assign(release_date=dates[df.index]).astype(dict.fromkeys(ints,
                                                                                     "int64")))
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
    """Write to a temporary file beside `path` (yielded), then swap it in: a reader (another
    notebook, a parallel test) sees the old file or the new one, never half of one."""
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


def load_clean(path, rebuild_from=None) -> pd.DataFrame:
    """Read the CSV written by save_clean (notebook 02) with its types restored. If it is
    missing and `rebuild_from` names the raw file, rebuild it as notebook 02 does (saying so),
    so that any notebook can run alone."""
    path = Path(path)
    if not path.is_file() and rebuild_from is not None:
        result = clean(load_raw(rebuild_from))
        save_clean(result, path)
        print(f"Cleaned data not found at {path}: rebuilt it from {Path(rebuild_from).name} "
              f"with clean(), as notebook 02 does ({len(result.data)} songs).")
    if not path.is_file():
        raise DataError(f"Cleaned data not found at {path}. Run notebook 02_cleaning first "
                        "(or the whole series with `make run`).")
    return typed_categories(pd.read_csv(path, parse_dates=["release_date"], encoding="utf-8",
                                        keep_default_na=False, na_values=[""]))


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------

PLATFORM_COLUMNS = [
    "in_spotify_playlists", "in_spotify_charts", "in_apple_playlists", "in_apple_charts",
    "in_deezer_playlists", "in_deezer_charts", "in_shazam_charts",
]
FEATURE_SETS = {
    # Does the sound of a song drive streams?
    "audio": [*AUDIO_NUMERIC, "key", "mode"],
    # What is known at release, plus exposure time (streams are all-time totals).
    "pre-release": [*AUDIO_NUMERIC, "key", "mode", "artist_count", "released_month",
                    "release_weekday", "days_since_release"],
    # Everything, including platform presence: largely a consequence of streams (leakage-prone).
    "full": [*AUDIO_NUMERIC, "key", "mode", "artist_count", "released_month",
             "release_weekday", "days_since_release", *PLATFORM_COLUMNS],
}
CATEGORICAL = ["key", "mode", "release_weekday"]
LOG_SCALED = [*PLATFORM_COLUMNS, "days_since_release"]  # heavy right tails: log1p first
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def add_features(clean_df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived model inputs (release weekday) to a cleaned frame."""
    df = clean_df.copy()
    weekday = df["release_date"].dt.day_of_week.map(dict(enumerate(WEEKDAYS)))
    df["release_weekday"] = pd.Categorical(weekday, categories=WEEKDAYS)
    return df


def log_streams(df: pd.DataFrame) -> np.ndarray:
    """The modelling target: log10 of total streams."""
    return np.log10(df[TARGET].to_numpy(dtype=float))


def make_preprocessor(feature_set: str):
    """Column transformer for one feature set: log1p tails, median impute + flag, scale, one-hot."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    columns = feature_columns(feature_set)
    logged = [c for c in columns if c in LOG_SCALED]
    plain = [c for c in columns if c not in LOG_SCALED and c not in CATEGORICAL]
    cats = [c for c in columns if c in CATEGORICAL]
    numeric = [SimpleImputer(strategy="median", add_indicator=True), StandardScaler()]
    parts = [("num", make_pipeline(*numeric), plain),
             ("log", make_pipeline(FunctionTransformer(np.log1p, feature_names_out="one-to-one"),
                                   *numeric), logged),
             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats)]
    # n_jobs=1: three tiny transformers; never worth a joblib (or Dask) task each
    return ColumnTransformer([p for p in parts if p[2]], verbose_feature_names_out=False, n_jobs=1)


def feature_columns(feature_set: str) -> list:
    """The input columns of a named feature set ('audio', 'pre-release' or 'full')."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"Unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}.")
    return FEATURE_SETS[feature_set]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


MIN_SONGS = 50  # below this, a 20 % test set and 5-fold CV leave too few songs per fold


def artist_key(frame: pd.DataFrame) -> pd.Series:
    """The first-named artist, normalized like pair_key: what a split keeps on one side."""
    return _name_key(frame["artist(s)_name"].astype("str").str.split(",").str[0])


def split_train_test(df: pd.DataFrame, seed=42, test_size=0.2):
    """Hold out a test set (touched only in notebook 06) by a stable hash of each song's first
    artist and the seed: all songs of an artist land on one side (about test_size of the
    artists are held out), and adding, editing or removing a row moves no other song."""
    if len(df) < MIN_SONGS:
        raise DataError(f"Only {len(df)} usable songs after cleaning; the series needs at least "
                        f"{MIN_SONGS} for a test set and 5-fold cross-validation.")
    digest = artist_key(df).map(lambda k: hashlib.sha256(f"{seed}|{k}".encode()).digest()[:8])
    in_test = (digest.map(lambda d: int.from_bytes(d, "big")) / 2**64 < test_size).to_numpy()
    if in_test.sum() < 5 or (~in_test).sum() < MIN_SONGS * (1 - test_size):
        raise DataError(f"{len(df)} songs by {artist_key(df).nunique()} artists: too few "
                        "artists to hold out a test set of whole artists. Use more songs.")
    return df[~in_test].reset_index(drop=True), df[in_test].reset_index(drop=True)


def cv_splits(df: pd.DataFrame, seed=42, n_splits=5, n_repeats=3, groups=None) -> list:
    """Repeated K-fold grouped by first artist (or `groups`): a list of (train positions,
    validation positions); no artist is on both sides of a fold."""
    from sklearn.model_selection import GroupKFold

    groups = artist_key(df) if groups is None else groups
    return [(np.sort(tr), np.sort(va))
            for r in range(n_repeats)
            for tr, va in GroupKFold(n_splits, shuffle=True, random_state=seed + r)
            .split(df, groups=groups)]


def median_factor(y_true, y_pred) -> float:
    """10^(median |error|) on log10 streams: 'the typical prediction is off by this factor'."""
    return float(10 ** np.median(np.abs(np.asarray(y_pred) - np.asarray(y_true))))


def regression_metrics(y_true, y_pred) -> dict:
    """R², MSE, MAE on log10 streams and the median factor (scikit-learn's metric functions)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {"r2": r2_score(y_true, y_pred), "mse": mean_squared_error(y_true, y_pred),
            "mae": mean_absolute_error(y_true, y_pred),
            "median_factor": median_factor(y_true, y_pred)}


def fold_predictions(model, df: pd.DataFrame, feature_set: str, splits, n_jobs=1) -> list:
    """scikit-learn's cross_validate of a fresh copy of `model` per split; each fitted copy's
    predictions for the rows it did not see (log10 streams), one array per split."""
    from sklearn.model_selection import cross_validate

    X = df[feature_columns(feature_set)]
    fitted = cross_validate(model, X, log_streams(df), cv=splits, scoring="r2",
                            return_estimator=True, n_jobs=n_jobs)["estimator"]
    return [estimator.predict(X.iloc[rows]) for estimator, (_, rows) in zip(fitted, splits)]


def fold_scores(df: pd.DataFrame, splits, predictions) -> pd.DataFrame:
    """regression_metrics of each split's held-out predictions; one row per fold."""
    y = log_streams(df)
    return pd.DataFrame([{"fold": i, **regression_metrics(y[rows], p)}
                         for i, ((_, rows), p) in enumerate(zip(splits, predictions))])


def cross_validate_model(model, df: pd.DataFrame, feature_set: str, splits, n_jobs=1):
    """Cross-validated scores of `model` (fold_predictions → fold_scores); one row per fold."""
    return fold_scores(df, splits, fold_predictions(model, df, feature_set, splits, n_jobs))


def paired_difference(a, b, splits) -> dict:
    """The series' one evidence standard: scores a − b compared fold by fold on the same folds.
    The mean difference; its standard error, corrected for folds that share training rows
    (Nadeau & Bengio 2003: the mean's variance is (1/J + n_validation/n_train)·s², not s²/J);
    and in how many of the J folds a wins. A difference counts beyond 2 standard errors."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    share = len(splits[0][1]) / len(splits[0][0])
    return {"r2_difference": float(d.mean()),
            "r2_difference_se": float(np.sqrt((1 / len(d) + share) * d.var(ddof=1)))
            if len(d) > 1 else np.nan,  # one fold (a smoke run): no spread to measure
            "folds_won": f"{(d > 0).sum()} of {len(d)}"}


def r2_interval(y_true, y_pred, seed=42, n_resamples=2000, minus=None) -> tuple[float, float]:
    """95 % bootstrap interval of R² on one test set (scipy.stats.bootstrap, percentile): the
    songs are resampled together with their predictions. With `minus` (another model's
    predictions of the same songs): the interval of the paired difference in R²."""
    from scipy.stats import bootstrap
    from sklearn.metrics import r2_score

    def r2(y, p, axis):
        return r2_score(np.moveaxis(y, axis, 0), np.moveaxis(p, axis, 0),
                        multioutput="raw_values")

    def statistic(y, p, *other, axis=-1):
        return r2(y, p, axis) - (r2(y, other[0], axis) if other else 0)

    data = [np.asarray(a) for a in (y_true, y_pred, *([] if minus is None else [minus]))]
    ci = bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                   method="percentile", rng=seed).confidence_interval
    return float(ci.low), float(ci.high)


def progress(iterable=None, desc: str = "", total=None, unit: str = ""):
    """A tqdm text bar for a long cell. Its last state, the one line a notebook keeps, holds no
    timings, so every run prints the same; scripts/run_series.py relays it to the console.
    Its size is fixed: a kernel started from a terminal would take that terminal's."""
    from tqdm import tqdm

    return tqdm(iterable, desc, total, unit=unit, ncols=100, nrows=100,
                bar_format="{desc}: {percentage:3.0f}%|{bar:10}| {n_fmt}/{total_fmt} {unit}")


class FitProgress:
    """A GridSearchCV callback (scikit-learn's sklearn.callback API): a progress() bar of the
    finished fits, which worker processes report through sklearn's own callback transport."""
    # Not sklearn.callback.ProgressBar: it draws with rich, which in a kernel without
    # ipywidgets shows no bar, only a warning.

    def setup(self, estimator, context):
        from sklearn.callback._transport import open_listener

        lock, self.bar = threading.Lock(), []

        def tick(total):  # the first finished fit opens the bar, below GridSearchCV's own line
            with lock:
                self.bar = self.bar or [progress(None, "grid search", total, "fits")]
                self.bar[0].update()
        self.listener = open_listener(tick)

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, **kwargs):
        from sklearn.callback._transport import send

        if context.task_name == "candidate-split-evaluation":  # one candidate on one fold
            with contextlib.suppress(OSError):  # a remote Dask worker cannot reach us: no tick
                send(self.listener, context.parent.max_subtasks)

    def teardown(self, estimator, context):
        from sklearn.callback._transport import close_listener

        close_listener(self.listener)
        for bar in self.bar:
            bar.close()
            bar.fp.flush()  # its last newline before any later output of the cell

    def __getstate__(self):  # what the workers get: the listener's address
        return {"listener": self.listener}


def summarize_cv(per_fold: pd.DataFrame, by=("model", "feature_set")) -> pd.DataFrame:
    """Mean and standard deviation of each metric across folds."""
    metrics = ["r2", "mse", "mae", "median_factor"]
    table = per_fold.groupby(list(by), sort=False)[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    return table.reset_index()


def save_metrics(run: Run, notebook: str, tables: dict, **extra) -> Path:
    """Write a notebook's metrics (tables, rounded) as JSON in the run's metrics folder."""
    def records(table):
        return json.loads(table.round(6).to_json(orient="records"))

    payload = {"notebook": notebook, "data": run.data_path.name, "real_data": run.is_real,
               "synthetic": run.is_synthetic, **extra,
               **{name: records(table) for name, table in tables.items()}}
    path = run.metrics_dir / f"{notebook}.json"
    with replacing(path) as partial:
        partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return path


def load_metrics(run: Run, notebook: str) -> dict:
    """Read the metrics JSON an earlier notebook wrote; on the real file, if this run has none
    (SERIES_REPORTS_DIR elsewhere), the committed one in reports/ (saying so)."""
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
    """A scikit-learn pipeline, preprocessing → estimator: 'mean', 'linear', 'ridge', 'hgb'
    (gradient boosting) or 'rf' (random forest, 100 trees) on one feature set. The estimator
    step is called `name`, so a search addresses its knobs as f"{name}__max_depth"; `params`
    set them here (notebook 05's tuned values)."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.pipeline import Pipeline

    estimators = {
        "mean": lambda: DummyRegressor(strategy="mean"),
        "linear": LinearRegression,
        "ridge": lambda: RidgeCV(alphas=np.logspace(-2, 3, 21)),
        "hgb": lambda: HistGradientBoostingRegressor(random_state=seed),
        "rf": lambda: RandomForestRegressor(random_state=seed),
    }
    if name not in estimators:
        raise ValueError(f"Unknown baseline {name!r}; choose from {list(estimators)}.")
    return Pipeline([("prep", make_preprocessor(feature_set)),
                     (name, estimators[name]().set_params(**params))])


MLP_DEFAULT = {"learning_rate": 0.001, "dropout": 0.2, "neurons": 64, "batch_size": 32,
               "epochs": 100}
SEED_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2, 0.3], "neurons": [64, 128],
             "batch_size": [16, 32], "epochs": [50, 100]}
QUICK_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2], "neurons": [64],
              "batch_size": [32], "epochs": [5]}  # smoke runs (QUICK): two configurations
# Training steps Keras runs per call into TensorFlow (compile's steps_per_execution). On a few
# hundred rows a step is microseconds of arithmetic, so the per-call overhead dominates.
STEPS_PER_EXECUTION = 512


def build_mlp(n_features, neurons=64, dropout=0.2, learning_rate=1e-3, seed=42,
              steps_per_execution=1):
    """The seed network, compiled: Dense(neurons, ReLU) → Dropout → Dense(neurons/2, ReLU) →
    Dropout → Dense(1), trained with Adam on the mean squared error. Every random layer gets
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
    # small ever gains from it (measured, see README "Performance").
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse",
                  steps_per_execution=steps_per_execution, jit_compile=False)
    return model


_TRAINERS = {}  # per process: one compiled Keras model per (inputs, neurons, dropout)
# scikeras seeds TensorFlow's process-wide generator around a fit: fits in two threads of one
# process (Dask runs tasks in threads) would reseed each other. One at a time per process.
_FIT_LOCK = threading.Lock()


def _trainer_for(model, learning_rate):
    """A compiled copy of `model` whose traced training step is reused across fits (tracing
    costs ~1.4 s a fit, more than the training itself), set to the fresh model's state:
    its initial weights and dropout seeds, a new Adam state, the learning rate."""
    import keras

    layers = model.layers
    key = (model.input_shape[1], layers[0].units, layers[1].rate)
    if key not in _TRAINERS:
        _TRAINERS[key] = build_mlp(*key, steps_per_execution=STEPS_PER_EXECUTION)
    trainer = _TRAINERS[key]
    trainer.set_weights(model.get_weights())
    for mine, fresh in zip(trainer.layers, layers):
        if isinstance(mine, keras.layers.Dropout) and mine.rate > 0:
            mine.seed_generator.state.assign(fresh.seed_generator.state)
    for variable in trainer.optimizer.variables:
        variable.assign(keras.ops.zeros_like(variable))
    trainer.optimizer.learning_rate.assign(learning_rate)
    return trainer


def _train_fast(estimator, X, y, epochs) -> dict:
    """KerasMLP's training: Keras's own model.fit on a tf.data pipeline that shuffles (anew each
    epoch), batches and repeats, on a model whose traced training step is reused (_trainer_for).
    Without callbacks or a validation split all epochs run as one (no per-epoch overhead); with
    them, Keras's epochs, validation on the last rows and callbacks work as usual. The trained
    weights and optimizer state go back to the estimator's model; returns History.history."""
    import tensorflow as tf
    from scikeras.utils.random_state import tensorflow_random_state

    n_fit = int(len(X) * (1 - (estimator.validation_split or 0)))  # Keras's split: last rows
    X, y = X.astype("float32"), y.astype("float32")
    val = (X[n_fit:], y[n_fit:]) if n_fit < len(X) else None
    trainer = _trainer_for(estimator.model_, estimator.learning_rate)
    with tensorflow_random_state(estimator.random_state):  # as scikeras seeds its own fit
        data = (tf.data.Dataset.from_tensor_slices((X[:n_fit], y[:n_fit]))
                .shuffle(n_fit, seed=estimator.random_state, reshuffle_each_iteration=True)
                .batch(estimator.batch_size))
        if val is None and not estimator.callbacks:  # no per-epoch work: one long epoch
            history = trainer.fit(data.repeat(epochs), epochs=1, shuffle=False, verbose=0)
        else:  # Keras's epochs: a fresh pass (a new shuffle) over `data` each
            history = trainer.fit(data, epochs=epochs, shuffle=False, verbose=0,
                                  validation_data=val, callbacks=estimator._fit_callbacks)
    model = estimator.model_
    model.set_weights(trainer.get_weights())
    model.optimizer.build(model.trainable_variables)
    for mine, trained in zip(model.optimizer.variables, trainer.optimizer.variables):
        mine.assign(trained)
    return history.history


@functools.cache
def _keras_mlp_class():
    """Define KerasMLP (see module __getattr__: scikeras imports TensorFlow, which is slow)."""
    from collections import defaultdict

    import tensorflow as tf
    from scikeras.wrappers import KerasRegressor

    tf.get_logger().setLevel("ERROR")  # retracing notices would land in notebook outputs

    class KerasMLP(KerasRegressor):
        """scikeras's KerasRegressor for the seed network (knobs as in build_mlp). It trains
        with Keras's model.fit through _train_fast; predictions call the model directly."""

        __qualname__ = "KerasMLP"  # picklable by name (loky and Dask workers import helpers)

        def __init__(self, neurons=64, dropout=0.2, learning_rate=1e-3, batch_size=32,
                     epochs=100, random_state=42, verbose=0, **kwargs):
            super().__init__(**kwargs)
            self.neurons, self.dropout, self.learning_rate = neurons, dropout, learning_rate
            self.batch_size, self.epochs = batch_size, epochs
            self.random_state, self.verbose = random_state, verbose

        def fit(self, X, y, **kwargs):
            with _FIT_LOCK:
                return super().fit(X, y, **kwargs)

        def _keras_build_fn(self, meta):
            return build_mlp(meta["n_features_in_"], self.neurons, self.dropout,
                             self.learning_rate, seed=self.random_state)

        def _fit_keras_model(self, X, y, sample_weight, warm_start, epochs, initial_epoch,
                             **kwargs):
            if kwargs or sample_weight is not None:  # scikeras's own loop for what we skip
                return super()._fit_keras_model(X, y, sample_weight, warm_start, epochs,
                                                initial_epoch, **kwargs)
            self.history_ = defaultdict(list, _train_fast(self, X, y, epochs))

        def _predict_raw(self, X, **kwargs):
            X, _ = self._validate_data(X=X, y=None)
            return self.model_(self.feature_encoder_.transform(X), training=False).numpy()

    return KerasMLP


def __getattr__(name):
    """KerasMLP is defined on first access, so `import helpers` stays free of TensorFlow."""
    if name != "KerasMLP":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _keras_mlp_class()


def make_mlp(feature_set: str, seed=42, **params):
    """The seed network as a scikit-learn Pipeline: notebook 03's preprocessing → KerasMLP,
    its target standardized on the training rows (TransformedTargetRegressor)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    mlp = _keras_mlp_class()(**{**MLP_DEFAULT, **params}, random_state=seed)
    return Pipeline([("prepare", make_preprocessor(feature_set)),
                     ("mlp", TransformedTargetRegressor(mlp, transformer=StandardScaler()))])


def grid_param(name: str) -> str:
    """The GridSearchCV parameter name of a KerasMLP knob inside make_mlp's pipeline."""
    return f"mlp__regressor__{name}"


TIE_R2 = 0.01  # mean CV R² differences below this are not evidence (SE of a 5-fold mean ≈ 0.02)


def cheapest_within(tie=TIE_R2):
    """A GridSearchCV `refit` rule: of the configurations whose mean CV R² is within `tie` of
    the best, the cheapest to train (epochs × steps per epoch × width), then the better
    scoring. Unlike the plain best, it does not flip between configurations whose scores
    differ by noise, such as another CPU's rounding (README, "Reproducibility")."""
    def choose(cv_results) -> int:
        results = pd.DataFrame(cv_results)

        def knob(name):
            return results[f"param_{grid_param(name)}"].astype(float)

        cost = knob("epochs") / knob("batch_size") * knob("neurons")
        tied = results["mean_test_score"] >= results["mean_test_score"].max() - tie
        order = pd.DataFrame({"cost": cost, "score": -results["mean_test_score"]})[tied]
        return int(order.sort_values(["cost", "score"], kind="stable").index[0])

    return choose


@contextlib.contextmanager
def parallel_backend(scheduler=None, timeout="20s"):
    """Where joblib-parallel work (GridSearchCV, cross_validate) runs: local processes, or a
    Dask cluster if a scheduler address is given (or set in DASK_SCHEDULER_ADDRESS); an
    unreachable address is an error after `timeout`."""
    import joblib

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


def save_model(pipeline, folder, feature_set: str, songs: pd.DataFrame, quick=False) -> Path:
    """Save a fitted make_mlp pipeline (scikeras stores its Keras model with keras.saving)
    and what predict_streams needs to prepare new rows like the training songs; `quick`
    marks a smoke-run model, which predict_streams never picks by default."""
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, folder / "model.joblib")
    info = {"feature_set": feature_set,  # a blank key means what it meant in training:
            "blank_key": "unknown" if (songs["key"] == "unknown").any() else "C",
            "reference_date": str(songs["release_date"].max().date()), "quick": bool(quick)}
    (folder / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder


def _is_quick_model(folder: Path) -> bool:
    info = folder / "model.json"
    return info.is_file() and json.loads(info.read_text(encoding="utf-8")).get("quick", False)


MODEL_FOLDERS = {"full": "final", "pre-release": "pre-release"}  # notebook 06 saves both


def predict_streams(frame: pd.DataFrame, model_dir=None, inputs="full") -> pd.Series:
    """Predicted streams for rows in the raw file's schema, from a model notebook 06 saved:
    inputs="full" (default) the tuned MLP, which needs the platform counts (playlists, charts;
    known only once a song is out), or inputs="pre-release" the forecaster for songs not yet
    on playlists (audio features, key, mode, artist count, release date). Rows that clean()
    would drop or refuse (see prepare_rows) are refused with a DataError naming each of them
    and why: no prediction is returned for a batch holding any."""
    import joblib

    if inputs not in MODEL_FOLDERS:
        raise ValueError(f"inputs={inputs!r}: choose 'full' or 'pre-release'.")
    if model_dir is not None:
        candidates = [Path(model_dir)]
    else:  # the notebooks' default output, then the main job's (`make run`), never QUICK's
        name = MODEL_FOLDERS[inputs]
        candidates = [c for c in [resolve_run().models_dir / name,
                                  BUILD_DIR / "run" / "models" / name] if not _is_quick_model(c)]
    folder = next((c for c in candidates if (c / "model.joblib").is_file()), None)
    if folder is None:
        raise DataError(f"No saved {inputs} (non-QUICK) model found. Run notebook 06_results "
                        "first (or the series with `make run`), or pass model_dir=.")
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError("predict_streams needs a non-empty DataFrame with the CSV's columns.")
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    rows = prepare_rows(frame, info)
    log10 = joblib.load(folder / "model.joblib").predict(rows[feature_columns(info["feature_set"])])
    return pd.Series(10 ** np.asarray(log10, dtype="float64"), index=frame.index,
                     name="predicted_streams")


def prepare_rows(frame: pd.DataFrame, info: dict) -> pd.DataFrame:
    """Model inputs for new rows (raw schema, no target needed), parsed and checked as clean()
    parses and checks them (parse_fields, row_problems). A row clean() would drop or refuse is
    refused: one DataError lists every such row by its index label, with the reasons."""
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
    why = _refusals(frame[needed], df, bad)
    if why.any():
        refused = [f"row {label}: {text}" for label, text in why[why != ""].items()]
        more = [f"... and {len(refused) - 20} more"] if len(refused) > 20 else []
        raise DataError(f"{len(refused)} of {len(frame)} row(s) refused; clean() would not use "
                        "them either. Fix or remove them:\n  " + "\n  ".join(refused[:20] + more)
                        + f"\n(keys: {', '.join(KEYS)}, blank: {info['blank_key']}; modes: "
                        f"{', '.join(MODES)})")
    df["release_date"] = release_dates(df)
    reference = pd.Timestamp(info["reference_date"])  # later releases get age 0, as new songs
    df["days_since_release"] = (reference - df["release_date"]).dt.days.clip(0)
    return add_features(typed_categories(df))


def _refusals(raw: pd.DataFrame, parsed: pd.DataFrame, bad: dict) -> pd.Series:
    """Per row, why clean() would not use it ('' if it would): a value that is no number, key or
    mode; a missing value (a blank in_shazam_charts is imputed; a blank key means blank_key);
    any rule of row_problems. Offending values are quoted."""
    invalid = {"key": "is not a key", "mode": "is not Major or Minor"}
    rules = {f"{c} {invalid.get(c, 'is not a number')}": m for c, m in bad.items()}
    rules |= {f"{c} is missing": parsed[c].isna() & ~bad[c]
              for c in parsed if c != "in_shazam_charts"}
    rules |= row_problems(parsed).to_dict("series")
    why = pd.Series("", index=raw.index, dtype="str")
    for rule, mask in rules.items():
        col = rule.split()[0]
        text = rule + (" (" + raw[col].astype("str").map(repr) + ")"
                       if col in raw and not rule.endswith("missing") else "")
        why = why.mask(mask.to_numpy(), why + "; " + text)
    return why.str.removeprefix("; ")


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def use_plot_style() -> None:
    """One look for every figure of the series (seaborn whitegrid, PNG-friendly size)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    # 150 dpi: sharp at README width (about 900 px for a 9-inch figure shown at half size)
    mpl.rcParams.update({"figure.figsize": (9, 4), "figure.dpi": 150, "savefig.dpi": 150})


def _count_label(value: float) -> str:
    """1_000_000 -> '1 M', 30_000_000 -> '30 M', 2e9 -> '2 B'."""
    for size, unit in [(1e9, "B"), (1e6, "M"), (1e3, "k")]:
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def streams_axis(axis, label="streams") -> None:
    """Label a matplotlib axis that holds log10(streams) in streams: 10 M, 30 M, 100 M, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    lo, hi = axis.get_view_interval()
    steps = (1, 3) if hi - lo < 3 else (1,)  # wider ranges: powers of ten only, legible
    ticks = [np.log10(m * 10.0 ** e) for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)
             for m in steps if lo <= np.log10(m * 10.0 ** e) <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _count_label(10 ** v)))
    axis.set_label_text(f"{label} (log scale)")


def ratio_axis(axis, label="actual ÷ predicted") -> None:
    """Label an axis that holds a log10 ratio as factors: ×0.1, ×0.3, ×1, ×3, ×10."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    lo, hi = axis.get_view_interval()
    ticks = [t for t in np.log10([0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100]) if lo <= t <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"×{10 ** v:.2g}"))
    axis.set_label_text(f"{label} (log scale)")


def save_figure(fig, run: Run, name: str) -> None:
    """Save a figure as PNG in the run's figures folder (the README shows the committed ones)."""
    with replacing(run.figures_dir / f"{name}.png") as partial:  # no version stamp below:
        fig.savefig(partial, metadata={"Software": None})  # the same bytes every run


def plot_target_distribution(streams: pd.Series):
    """Histogram of streams on a linear and on a log10 scale, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    axes[0].hist(streams / 1e9, bins=40)
    axes[0].set(xlabel="streams (billions)", ylabel="tracks", title="as counted")
    axes[1].hist(np.log10(streams), bins=40)
    axes[1].set(title="log scale")
    streams_axis(axes[1].xaxis)
    fig.tight_layout()
    return fig


def plot_against_target(df: pd.DataFrame, columns, log_x=False, ncols=4):
    """Scatter of log10(streams) against each column, one small panel per column."""
    import matplotlib.pyplot as plt

    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 2.6 * nrows), sharey=True, squeeze=False)
    y = log_streams(df)
    for ax, col in zip(axes.flat, columns):
        x = np.log10(1 + df[col]) if log_x else df[col]
        ax.scatter(x, y, s=5, alpha=0.4)
        ax.set_xlabel(f"log10(1 + {col})" if log_x else col, fontsize=9)
    for ax in axes.flat[len(columns):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        streams_axis(ax.yaxis)
    fig.tight_layout()
    return fig


def plot_cv_scores(summary: pd.DataFrame, metric="r2"):
    """Bar chart of mean CV score (± one std across folds) per model and feature set."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    sets = list(dict.fromkeys(summary["feature_set"]))
    fig, ax = plt.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        part = summary[summary["model"] == model].set_index("feature_set").reindex(sets)
        ax.bar(np.arange(len(sets)) + i * width, part[f"{metric}_mean"], width,
               yerr=part[f"{metric}_std"], capsize=3, label=model)
    ax.set_xticks(np.arange(len(sets)) + width * (len(models) - 1) / 2, sets)
    ax.set(ylabel=f"CV {metric.replace('r2', 'R²')} (log10 streams)", xlabel="feature set")
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(ncol=min(len(models), 4), fontsize=8, loc="upper left")  # fixed: "best" jumps
    fig.tight_layout()
    return fig


def plot_coefficients(coefs: pd.Series, title=""):
    """Horizontal bars of model coefficients (standardized inputs), largest magnitude on top."""
    import matplotlib.pyplot as plt

    coefs = coefs.reindex(coefs.abs().sort_values().index)
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(coefs) + 1))
    ax.barh(coefs.index, coefs.values, color=np.where(coefs.values > 0, "tab:blue", "tab:red"))
    ax.set(xlabel="coefficient (change in log10 streams per std of input)", title=title)
    fig.tight_layout()
    return fig


def knob_effects(table: pd.DataFrame, splits, params=tuple(SEED_GRID)) -> pd.DataFrame:
    """Per hyperparameter of a search table (cv_results_ with split<k>_test_score columns):
    the paired effect of moving it from its lower to its higher value, between configurations
    equal in every other knob: per fold, the mean difference over those matched pairs, then
    paired_difference over the folds; and how many matched pairs the higher value wins."""
    folds = list(table.filter(regex=r"^split\d+_test_score$").columns)
    rows = []
    for p in [p for p in params if table[p].nunique() == 2]:
        low, high = sorted(table[p].unique())
        others = [q for q in params if q != p]
        a, b = (table[table[p] == v].set_index(others).sort_index() for v in (high, low))
        pairs = a["mean_test_score"] - b["mean_test_score"]
        rows.append({"knob": p, "change": f"{low:g} → {high:g}",
                     **paired_difference((a[folds] - b[folds]).mean(), 0, splits),
                     "pairs_won": f"{(pairs > 0).sum()} of {len(pairs)}"})
    columns = ["knob", "change", "r2_difference", "r2_difference_se", "folds_won", "pairs_won"]
    return pd.DataFrame(rows, columns=columns).set_index("knob")


def plot_knob_effects(table: pd.DataFrame, params=tuple(SEED_GRID)):
    """One panel per hyperparameter: every configuration's CV R² at each value, with the mean."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(12, 3), sharey=True)
    for ax, p in zip(axes, params):
        values = sorted(table[p].unique())
        for i, v in enumerate(values):
            scores = table.loc[table[p] == v, "mean_test_score"]
            ax.scatter(np.full(len(scores), i), scores, s=12, alpha=0.6)
            ax.hlines(scores.mean(), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_xlabel(p)
    axes[0].set_ylabel("mean CV R²")
    fig.tight_layout()
    return fig


def plot_interactions(table: pd.DataFrame, pairs):
    """Heatmaps of mean CV R² for pairs of hyperparameters (averaged over the other knobs), on
    one colour scale with one colorbar."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    grids = [table.pivot_table(index=a, columns=b, values="mean_test_score") for a, b in pairs]
    scale = {"vmin": min(g.min().min() for g in grids), "vmax": max(g.max().max() for g in grids)}
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.4 * len(pairs), 3), squeeze=False)
    for i, (ax, grid) in enumerate(zip(axes.flat, grids)):
        sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", **scale, ax=ax,
                    cbar=i == len(grids) - 1, cbar_kws={"label": "mean CV R²"})
    fig.tight_layout()
    return fig


def plot_prediction_errors(y_true, predictions: dict, kind="actual_vs_predicted"):
    """scikit-learn's PredictionErrorDisplay per model, on log10 streams labelled in streams:
    predicted against actual, or (kind="residual_vs_predicted") actual ÷ predicted against the
    prediction (against the actual value, residuals slope for any R² below 1)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import PredictionErrorDisplay

    fig, axes = plt.subplots(1, len(predictions), figsize=(4 * len(predictions), 3.8),
                             squeeze=False)  # the display sets equal axes itself
    for ax, (label, pred) in zip(axes.flat, predictions.items()):
        PredictionErrorDisplay.from_predictions(y_true, pred, kind=kind, ax=ax, subsample=None,
                                                scatter_kwargs={"s": 8, "alpha": 0.5})
        ax.set_title(label)
        streams_axis(ax.xaxis, "predicted streams")
        if kind == "actual_vs_predicted":
            streams_axis(ax.yaxis, "actual streams")
        else:
            ratio_axis(ax.yaxis, "actual ÷ predicted")
    fig.tight_layout()
    return fig


def plot_importance(importances: dict, base_r2: dict, rows=None):
    """Permutation importance (drop in test R² when a column is shuffled, ± sd over repeats):
    one row of panels per model (or per rows[model], to share a row), one column per feature
    set (empty where no model of the row ran), each column on one x-scale; each title gives
    the model's own test R², without which a drop cannot be read."""
    import matplotlib.pyplot as plt

    rows = rows or {}
    labels = list(dict.fromkeys(rows.get(m, m) for m, _ in importances))
    sets = list(dict.fromkeys(fs for _, fs in importances))
    fig, axes = plt.subplots(len(labels), len(sets), figsize=(4.2 * len(sets), 3.4 * len(labels)),
                             sharex="col", squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for (model, fs), imp in importances.items():
        ax = axes[labels.index(rows.get(model, model)), sets.index(fs)]
        ax.set_visible(True)
        imp = imp.head(8).iloc[::-1]
        ax.barh(imp["feature"], imp["r2_drop"], xerr=imp["r2_drop_std"], capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{model}, {fs}: test R² {base_r2[model, fs]:.2f}", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    for column in axes.T:  # the lowest panel drawn in each column carries the x-axis
        lowest = [ax for ax in column if ax.get_visible()][-1]
        lowest.set_xlabel("drop in test R² when shuffled")
        lowest.tick_params(axis="x", labelbottom=True)
    fig.tight_layout()
    return fig
