"""Shared code for the Spotify-streams notebook series.

Sections: paths · data · features · evaluation · models · plots.
The notebooks import what they need by name (``from helpers import load_raw, clean``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# Before TensorFlow is ever imported: silence its C++ start-up log lines (they would land in
# notebook outputs and break nbval comparisons) and keep oneDNN off, so numbers match everywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Tiny matmuls: XLA's multi-threaded Eigen loses more to thread hand-offs than it gains on two
# cores (~1.4x slower, measured). XLA reads the flag at its first compile.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()

import numpy as np
import pandas as pd

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


def resolve_run(data_path=None, output_dir=None) -> Run:
    """Resolve the data file and output folders of a run (defaults: real file, else sample)."""
    if data_path is None:
        data_path = RAW_DATA if RAW_DATA.exists() else SAMPLE_DATA
    data_path = Path(data_path).expanduser().resolve()
    is_real = data_path.is_file() and file_sha256(data_path) == REAL_SHA256
    is_synthetic = data_path == SAMPLE_DATA.resolve()
    if output_dir is not None:
        out = Path(output_dir).expanduser().resolve()
        return Run(data_path, out, out / "metrics", is_real, is_synthetic)
    if is_real:  # the committed results: metrics in reports/, derived data out of git
        return Run(data_path, BUILD_DIR / "real", REPORTS_DIR / "metrics", True, False)
    out = BUILD_DIR / ("synthetic" if is_synthetic else data_path.stem)
    return Run(data_path, out, out / "metrics", is_real, is_synthetic)


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


def _decode(raw: bytes) -> str:
    """Bytes to text: UTF-8 (with or without BOM), damaged UTF-8, or a Latin-1/CP1252 re-save."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Damaged UTF-8 (the original file) still holds multi-byte sequences: keep UTF-8 and mark
    # the broken bytes with U+FFFD. A Latin-1 re-save has none: decode it as CP1252.
    if re.search(rb"[\xc2-\xf4][\x80-\xbf]", raw):
        return raw.decode("utf-8", errors="replace")
    return raw.decode("cp1252", errors="replace")


def load_raw(path=None) -> pd.DataFrame:
    """Read the Kaggle CSV (any common re-save of it) as text columns, never modifying the file."""
    path = resolve_run(path).data_path if path is None else Path(path).expanduser()
    if not path.is_file():
        hint = DOWNLOAD_HINT if path.name == RAW_DATA.name else "Check the path."
        raise DataError(f"Data file not found: {path}. {hint}")
    raw = path.read_bytes()
    if not raw.removeprefix(b"\xef\xbb\xbf").strip():
        raise DataError(f"{path} is empty. Re-download it; the original is 106,270 bytes.")
    if b"\x00" in raw[:4096]:
        raise DataError(f"{path} is not a CSV text file (it holds binary data). "
                        "Pass the unzipped spotify-2023.csv.")
    text = _decode(raw)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                            na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} could not be parsed as CSV ({exc}). "
                        "Pass the original comma-separated file.") from None
    frame = frame.loc[:, ~(frame.columns.str.startswith("Unnamed:") & frame.isna().all())]
    frame.columns = frame.columns.str.strip().str.removeprefix("\ufeff")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if len(missing) == len(REQUIRED_COLUMNS):
        raise DataError(f"{path} does not look like the Spotify 2023 CSV: none of the expected "
                        f"columns (e.g. {', '.join(REQUIRED_COLUMNS[:3])}) is in its header.")
    if missing:
        raise DataError(f"{path} lacks required column(s): {', '.join(missing)}. "
                        "Use a file with the schema of the Kaggle 'Top Spotify Songs 2023' data.")
    if frame.empty:
        raise DataError(f"{path} has a header but no data rows.")
    extra = [c for c in frame.columns if c not in REQUIRED_COLUMNS]
    return frame[REQUIRED_COLUMNS + extra]


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
                     "example not numeric": bad.iloc[0][:40] if len(bad) else ""})
    return pd.DataFrame(rows).set_index("column")


@dataclass
class CleanResult:
    """The cleaned frame plus one record per cleaning step (what was done, to how many rows)."""

    data: pd.DataFrame
    steps: list = field(default_factory=list)
    dropped: pd.DataFrame | list = None  # the removed raw rows, each with its reason
    reference_date: pd.Timestamp | None = None

    def log(self, step: str, rows: int, action: str) -> None:
        self.steps.append({"step": step, "rows": int(rows), "action": action})

    def steps_table(self) -> pd.DataFrame:
        """The steps as a table for display."""
        return pd.DataFrame(self.steps, columns=["step", "rows", "action"])


def parse_numbers(values: pd.Series) -> pd.Series:
    """Text to float: strips thousands separators and blanks; unparseable text becomes NaN."""
    text = values.astype("str").str.strip().str.replace(",", "", regex=False)
    return pd.to_numeric(text.where(values.notna()), errors="coerce")


def pair_key(frame: pd.DataFrame) -> pd.Series:
    """A normalized track/artist key: case, spacing and encoding damage ignored."""
    parts = [frame[c].astype("str").str.casefold().str.replace(r"[\W_]+", "", regex=True)
             for c in NAME_COLUMNS]
    return parts[0] + "|" + parts[1]


def release_dates(df: pd.DataFrame) -> pd.Series:
    """Release dates from the numeric year/month/day columns (NaT where impossible)."""
    parts = {"year": df["released_year"], "month": df["released_month"], "day": df["released_day"]}
    return pd.to_datetime(pd.DataFrame(parts), errors="coerce")


def clean(raw: pd.DataFrame) -> CleanResult:
    """Clean a raw frame from load_raw; every step is recorded with its row count."""
    df = raw.copy()
    df.insert(0, "raw_row", raw.index)  # traceability: the row's position in the raw file
    result = CleanResult(df, dropped=[])
    n_start = len(df)
    result.log("start", n_start, "rows in the raw file")

    def drop(mask, step, action):
        nonlocal df
        result.dropped.append(df.loc[mask, ["raw_row", *NAME_COLUMNS]].assign(reason=step))
        df = df[~mask]
        result.log(step, mask.sum(), action)

    # 1. Names: undecodable bytes became U+FFFD; collapse each run to one marker.
    damaged = df[NAME_COLUMNS].apply(lambda s: s.str.contains("\ufffd", na=False)).any(axis=1)
    for col in NAME_COLUMNS:
        df[col] = df[col].fillna("").str.replace(r"\ufffd+", "\ufffd", regex=True).str.strip()
    result.log("encoding damage in names", damaged.sum(),
               "kept; each run of lost characters marked once with \ufffd")

    # 2. Numbers: thousands separators, then text that is not a number.
    n_sep, text_target = 0, None
    for col in NUMERIC_COLUMNS:
        n_sep += int(df[col].str.contains(r"\d,\d", regex=True, na=False).sum())
        parsed = parse_numbers(df[col])
        bad = parsed.isna() & df[col].notna()
        if bad.any() and (col != TARGET or bad.sum() > 0.5 * df[col].notna().sum()):
            raise DataError(f"Column '{col}' holds {int(bad.sum())} value(s) that are not numbers, "
                            f"e.g. {df.loc[bad, col].iloc[0]!r}. Fix or blank them in the CSV"
                            + ("; the target must hold stream counts." if col == TARGET else "."))
        text_target = bad if col == TARGET else text_target
        df[col] = parsed
    result.log("thousands separators", n_sep, "removed ('1,021' -> 1021)")
    drop(text_target, "corrupted streams value", "dropped: the target is unreadable")
    no_target = df[TARGET].isna() | (df[TARGET] <= 0)
    if no_target.any():
        drop(no_target, "missing streams", "dropped: no target")
    if df.empty:
        raise DataError("No row has a usable 'streams' value (a positive number). "
                        "Check the column: it must hold total stream counts.")

    # 3. Missing values: key (C is never written), Shazam charts (unknown, not zero).
    no_key = df["key"].isna()
    has_c = (df["key"] == "C").any()
    df["key"] = df["key"].fillna("unknown" if has_c else "C")
    result.log("missing key", no_key.sum(),
               "filled with 'unknown' (key C occurs, so blanks are not C)" if has_c
               else "filled with 'C': no row states key C")
    result.log("missing in_shazam_charts", df["in_shazam_charts"].isna().sum(),
               "left missing; imputed inside each model's folds (median + missing flag)")
    incomplete = df[[c for c in NUMERIC_COLUMNS if c != "in_shazam_charts"]].isna().any(axis=1)
    if (incomplete | df["mode"].isna()).any():
        drop(incomplete | df["mode"].isna(), "missing numbers or mode", "dropped: no safe default")
    for col, allowed in [("key", [*KEYS, "unknown"]), ("mode", MODES)]:
        unknown = ~df[col].isin(allowed)
        if unknown.any():
            raise DataError(f"Column '{col}' holds {int(unknown.sum())} unknown value(s), e.g. "
                            f"{df.loc[unknown, col].iloc[0]!r}; allowed: {', '.join(allowed)}.")

    # 4. Duplicate track/artist pairs: keep the later snapshot (more streams, then playlists).
    key = pair_key(df)
    order = df.sort_values([TARGET, "in_spotify_playlists"], ascending=False, kind="stable").index
    repeated = pd.Series(key.loc[order].duplicated().to_numpy(), index=order).reindex(df.index)
    drop(repeated, "duplicate track/artist pairs",
         f"dropped; of {key[key.duplicated(keep=False)].nunique()} repeated pairs kept "
         "the row with more streams")

    # 5. Implausible values.
    drop(df[TARGET] < MIN_PLAUSIBLE_STREAMS, f"streams below {MIN_PLAUSIBLE_STREAMS:,}",
         "dropped: not a chart hit")
    drop(df["released_year"] < MIN_PLAUSIBLE_YEAR, f"release year before {MIN_PLAUSIBLE_YEAR}",
         "dropped: placeholder date")

    # 6. Types and dates.
    dates = release_dates(df)
    if dates.isna().any():
        drop(dates.isna(), "impossible release dates", "dropped")
    df = df.copy()
    df["release_date"] = dates[df.index]
    ints = [c for c in NUMERIC_COLUMNS if c != "in_shazam_charts"]
    df[ints] = df[ints].astype("int64")
    df["key"] = pd.Categorical(df["key"], categories=[*KEYS, "unknown"])
    df["mode"] = pd.Categorical(df["mode"], categories=MODES)
    if df.empty:
        raise DataError("No rows are left after cleaning; check the file's contents.")
    result.reference_date = df["release_date"].max()
    df["days_since_release"] = (result.reference_date - df["release_date"]).dt.days
    result.data = df.reset_index(drop=True)
    result.dropped = pd.concat(result.dropped, ignore_index=True)
    result.log("end", len(result.data), f"clean rows ({n_start - len(result.data)} removed)")
    return result


def save_clean(result: CleanResult, path) -> Path:
    """Write cleaned data as CSV for the later notebooks; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.data.to_csv(path, index=False, date_format="%Y-%m-%d")
    return path


def load_clean(path) -> pd.DataFrame:
    """Read the CSV written by save_clean (notebook 02) with its types restored."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Cleaned data not found at {path}. Run notebook 02_cleaning first "
                        "(or the whole series with `make run`).")
    df = pd.read_csv(path, parse_dates=["release_date"], encoding="utf-8",
                     keep_default_na=False, na_values=[""])
    df["key"] = pd.Categorical(df["key"], categories=[*KEYS, "unknown"])
    df["mode"] = pd.Categorical(df["mode"], categories=MODES)
    return df


def make_synthetic_sample(n_rows=400, seed=2023) -> bytes:
    """Bytes of a fake CSV with the real file's schema and quirks (no real song in it)."""
    if n_rows < 20:
        raise ValueError("n_rows must be at least 20 to hold every quirk of the real file.")
    rng = np.random.default_rng(seed)
    words = ["Night", "Love", "Fuego", "Corazón", "Summer", "Ghost", "Dance", "Río", "Gold",
             "Heart", "Canción", "Rain", "Fiesta", "Blue", "Away", "Mañana", "Fire", "Dream"]
    people = ["Luna Vega", "The Paper Kites", "DJ Koral", "Mara", "Béla Nox", "Kid Orbit",
              "Sol y Sombra", "Ivy Lane", "MC Ruído", "Northbound", "Zoë Park", "Los Fríos"]
    popularity = rng.normal(0, 1, n_rows)  # hidden "hit power": drives streams and playlists
    year = np.where(rng.random(n_rows) < 0.8, rng.integers(2019, 2024, n_rows),
                    rng.integers(1955, 2019, n_rows))
    month, day = rng.integers(1, 13, n_rows), rng.integers(1, 29, n_rows)
    month[year == 2023] = rng.integers(1, 7, (year == 2023).sum())
    age_years = 2023.5 - (year + month / 12)
    noise = rng.normal(0, 0.2, n_rows)
    log_streams = 8.3 + 0.45 * popularity + 0.35 * np.log10(1 + age_years) + noise
    pop_playlist = popularity + 0.3 * np.log1p(age_years)

    def counts(scale, noise):
        """Playlist-like counts: consequences of popularity, with noise."""
        noisy = scale + 1.1 * pop_playlist + rng.normal(0, noise, n_rows)
        return np.round(np.exp(noisy)).astype(int)

    n_artists = rng.choice([1, 1, 1, 2, 2, 3], n_rows)
    ints = rng.integers
    frame = pd.DataFrame({
        "track_name": [f"{rng.choice(words)} {rng.choice(words)} {i}" for i in range(n_rows)],
        "artist(s)_name": [", ".join(rng.choice(people, k, replace=False)) for k in n_artists],
        "artist_count": n_artists, "released_year": year,
        "released_month": month, "released_day": day,
        "in_spotify_playlists": counts(7.6, 0.5),
        "in_spotify_charts": np.maximum(0, rng.normal(10 + 15 * popularity, 15)).astype(int),
        "streams": (10 ** log_streams).astype(np.int64),
        "in_apple_playlists": counts(3.9, 0.6), "in_apple_charts": ints(0, 150, n_rows),
        "in_deezer_playlists": counts(4.0, 0.8), "in_deezer_charts": ints(0, 20, n_rows),
        "in_shazam_charts": np.where(rng.random(n_rows) < 0.3, ints(0, 1500, n_rows),
                                     ints(0, 20, n_rows)),
        "bpm": ints(65, 200, n_rows), "key": rng.choice(KEYS, n_rows),
        "mode": rng.choice(MODES, n_rows),
        **{c: ints(0, 20 if c == "instrumentalness_%" else 98, n_rows) for c in AUDIO_NUMERIC[1:]},
    })
    for col in ["in_deezer_playlists", "in_shazam_charts"]:  # thousands separators, as text
        frame[col] = frame[col].map(lambda v: f"{v:,}")
    frame["key"] = frame["key"].where(frame["key"] != "C")  # key C is written as a blank
    frame.loc[rng.choice(n_rows, n_rows // 20, replace=False), "in_shazam_charts"] = None
    frame = frame.astype({"streams": "str", "released_year": "int64"})
    frame.loc[5, "streams"] = ("BPM110KeyAModeMajorDanceability53Valence75Energy69Acousticness7"
                               "Instrumentalness0Liveness17Speechiness3")
    frame.loc[7, "streams"] = "2762"
    frame.loc[9, "released_year"] = 1930
    dups = frame.iloc[10:14].copy()  # four repeated pairs that disagree with their twins
    dups["in_spotify_playlists"] = (dups["in_spotify_playlists"] * 0.6).astype(int)
    dups["streams"] = [str(int(int(s) * f)) for s, f in zip(dups["streams"], [1, .98, .5, 1.01])]
    frame = pd.concat([frame, dups], ignore_index=True)
    text = frame.to_csv(index=False, lineterminator="\r\n")
    raw = text.encode("utf-8")
    # Encoding damage as in the original: lost characters, some cut mid-sequence.
    raw = raw.replace("ñ".encode(), b"\xef\xbf\xbd\xef\xbf\xbd").replace("ó".encode(), b"\xef\xbf")
    return raw


def write_synthetic_sample(path=SAMPLE_DATA, n_rows=400, seed=2023) -> Path:
    """Write the synthetic sample CSV (committed as data/sample/...); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_synthetic_sample(n_rows, seed))
    return path


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
    return ColumnTransformer([p for p in parts if p[2]], verbose_feature_names_out=False)


def feature_columns(feature_set: str) -> list:
    """The input columns of a named feature set ('audio', 'pre-release' or 'full')."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"Unknown feature set {feature_set!r}; choose from {list(FEATURE_SETS)}.")
    return FEATURE_SETS[feature_set]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


MIN_SONGS = 50  # below this, a 20 % test set and 5-fold CV leave too few songs per fold


def split_train_test(df: pd.DataFrame, seed=42, test_size=0.2):
    """Hold out a test set (touched only in notebook 06); repeated pairs stay on one side."""
    from sklearn.model_selection import GroupShuffleSplit

    if len(df) < MIN_SONGS:
        raise DataError(f"Only {len(df)} usable songs after cleaning; the series needs at least "
                        f"{MIN_SONGS} for a test set and 5-fold cross-validation.")

    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train_idx, test_idx = next(splitter.split(df, groups=pair_key(df)))
    return (df.iloc[np.sort(train_idx)].reset_index(drop=True),
            df.iloc[np.sort(test_idx)].reset_index(drop=True))


def cv_splits(df: pd.DataFrame, seed=42, n_splits=5, n_repeats=3) -> list:
    """Repeated grouped K-fold: a list of (train positions, validation positions)."""
    from sklearn.model_selection import GroupKFold

    groups = pair_key(df)
    return [(np.sort(tr), np.sort(va))
            for r in range(n_repeats)
            for tr, va in GroupKFold(n_splits, shuffle=True, random_state=seed + r)
            .split(df, groups=groups)]


def regression_metrics(y_true, y_pred) -> dict:
    """MSE, MAE and R² on log10 streams, plus the median factor between predicted and actual."""
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    total = np.sum((y_true - np.mean(y_true)) ** 2)
    return {"r2": float(1 - np.sum(err**2) / total), "mse": float(np.mean(err**2)),
            "mae": float(np.mean(np.abs(err))),
            "median_factor": float(10 ** np.median(np.abs(err)))}


def cross_val_predictions(make_model, df: pd.DataFrame, feature_set: str, splits) -> np.ndarray:
    """Validation predictions of a fresh model per split ([splits, rows], NaN off-fold)."""
    X, y = df[feature_columns(feature_set)], log_streams(df)
    predictions = np.full((len(splits), len(df)), np.nan)
    for i, (tr, va) in enumerate(splits):
        predictions[i, va] = make_model(feature_set).fit(X.iloc[tr], y[tr]).predict(X.iloc[va])
    return predictions


def fold_metrics(df: pd.DataFrame, splits, predictions: np.ndarray) -> pd.DataFrame:
    """One row of validation metrics per split, from predictions shaped [splits, rows]."""
    y = log_streams(df)
    return pd.DataFrame([{"fold": i, **regression_metrics(y[va], predictions[i, va])}
                         for i, (_, va) in enumerate(splits)])


def cross_validate(make_model, df: pd.DataFrame, feature_set: str, splits) -> pd.DataFrame:
    """Fit a fresh scikit-learn model per split; one row of validation metrics per fold."""
    return fold_metrics(df, splits, cross_val_predictions(make_model, df, feature_set, splits))


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_metrics(run: Run, notebook: str) -> dict:
    """Read the metrics JSON an earlier notebook wrote."""
    path = run.metrics_dir / f"{notebook}.json"
    if not path.is_file():
        raise DataError(f"Metrics of {notebook} not found at {path}. Run that notebook first.")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (Keras) random generators."""
    import keras

    keras.utils.set_random_seed(seed)



def make_baseline(name: str, feature_set: str, seed=42):
    """A scikit-learn pipeline: 'mean', 'linear', 'ridge' or 'hgb' on one feature set."""
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.pipeline import make_pipeline

    estimators = {
        "mean": lambda: DummyRegressor(strategy="mean"),
        "linear": LinearRegression,
        "ridge": lambda: RidgeCV(alphas=np.logspace(-2, 3, 21)),
        "hgb": lambda: HistGradientBoostingRegressor(random_state=seed),
    }
    if name not in estimators:
        raise ValueError(f"Unknown baseline {name!r}; choose from {list(estimators)}.")
    return make_pipeline(make_preprocessor(feature_set), estimators[name]())


# Keras 3 Adam defaults (keras/src/optimizers/adam.py).
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7


def build_mlp(n_features, neurons=64, dropout=0.2, learning_rate=1e-3, seed=42):
    """The seed architecture as a compiled keras.Sequential (plain Keras path)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(n_features,)),
        keras.layers.Dense(neurons, activation="relu"),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(neurons // 2, activation="relu"),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    return model


def fit_mlp_keras(X, y, *, neurons=64, dropout=0.2, learning_rate=1e-3, batch_size=32,
                  epochs=100, seed=42, validation_data=None):
    """Seed-style plain Keras training (model.fit on numpy); returns (model, history dict)."""
    model = build_mlp(X.shape[1], neurons, dropout, learning_rate, seed)  # seeds Keras globally
    history = model.fit(X, y, batch_size=batch_size, epochs=epochs, verbose=0,
                        validation_data=validation_data)
    return model, history.history


@dataclass
class MLPBatch:
    """Result of train_mlp_batch; every array has the model axis M (see train_mlp_batch)."""
    history: dict      # "loss", "val_loss": arrays [epochs, M]
    predictions: dict  # {epoch: [M, N]} eval-mode predictions on all rows
    weights: dict      # {epoch: [W1, b1, W2, b2, W3, b3]}, each with leading axis M


def _init_weights(seed, M, F, neurons):
    """Glorot-uniform kernels and zero biases, the same for all M models (like set_random_seed)."""
    rng = np.random.default_rng([seed, 0])
    weights = []
    for fan_in, fan_out in [(F, neurons), (neurons, neurons // 2), (neurons // 2, 1)]:
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        weights += [np.repeat(kernel[None], M, axis=0), np.zeros((M, fan_out), np.float32)]
    return weights


def _order_rng(seed):
    """The generator of one model's batch order (every model gets its own, same seed)."""
    return np.random.default_rng([seed, 1])


def _epoch_order(rng, train_idx):
    """One epoch's row order for one model: a fresh permutation of its training rows."""
    return rng.permutation(train_idx)


def _batch_plan(orders, n_steps, batch_size):
    """Pad per-model orders to [M, n_steps, batch_size] row indices plus a 0/1 validity weight."""
    M = len(orders)
    idx = np.zeros((M, n_steps * batch_size), np.int32)
    valid = np.zeros((M, n_steps * batch_size), np.float32)
    for m, order in enumerate(orders):
        idx[m, :len(order)] = order
        valid[m, :len(order)] = 1.0
    return idx.reshape(M, n_steps, batch_size), valid.reshape(M, n_steps, batch_size)


def _forward(params, x):
    """Eval-mode forward pass of all models: x [M, R, F] -> predictions [M, R]."""
    import tensorflow as tf

    W1, b1, W2, b2, W3, b3 = params
    h1 = tf.nn.relu(tf.matmul(x, W1) + b1[:, None, :])
    h2 = tf.nn.relu(tf.matmul(h1, W2) + b2[:, None, :])
    return (tf.matmul(h2, W3) + b3[:, None, :])[..., 0]


def _dropout_scale(u, rate):
    """Inverted-dropout multiplier [M, B, H] from uniforms u [B, H]: 1/(1-rate) if u >= rate.

    The same draw u is shared by all models, so each model sees exactly the noise it would see
    if trained alone; keeping a unit when u >= rate follows tf.nn stateless_dropout.
    """
    import tensorflow as tf

    r = rate[:, None, None]
    return tf.where(u[None] >= r, 1.0 / (1.0 - r), 0.0)


def _dropout_uniforms(seed, epoch, n_steps, batch_size, neurons, use_dropout):
    """One epoch's dropout uniforms per layer, [steps, batch, width], seeded by (seed, epoch).

    Drawn eagerly (outside XLA): the same draw inside the compiled loop was several times slower.
    """
    import tensorflow as tf

    if not use_dropout:
        return tf.zeros([1, 1, 1]), tf.zeros([1, 1, 1])
    return tuple(tf.random.stateless_uniform([n_steps, batch_size, width],
                                             seed=[seed, 2 * epoch + layer])
                 for layer, width in enumerate([neurons, neurons // 2]))


# One XLA compile per (M, N, F, neurons, batch, steps, use_dropout); the whole epoch is one
# compiled while-loop (2-3x faster than the non-XLA graph for these tiny matmuls).
def _train_epoch(state, X, y, idx, valid, lr, rate, u1, u2, use_dropout):
    """One epoch of minibatch Adam for all models: (state, summed sq. error [M], preds [M, N])."""
    import tensorflow as tf

    n_steps = tf.shape(idx)[1]

    def step(s, params, mom, vel, t, sse):
        W1, b1, W2, b2, W3, b3 = params
        rows = idx[:, s]                                   # [M, B] row numbers (gathering per
        w = valid[:, s]                                    # step = pre-permuting, speed-wise)
        xb = tf.gather(X, rows, batch_dims=1)              # [M, B, F]
        yb = tf.gather(y, rows, batch_dims=1)              # [M, B]; w: [M, B], 0 on padding
        count = tf.reduce_sum(w, axis=1)                   # rows actually in the batch
        active = count > 0                                 # all-padding step => no-op
        # Forward pass in training mode.
        z1 = tf.matmul(xb, W1) + b1[:, None, :]
        z2_in = tf.nn.relu(z1)
        if use_dropout:
            d1, d2 = _dropout_scale(u1[s], rate), _dropout_scale(u2[s], rate)
            z2_in = z2_in * d1
        z2 = tf.matmul(z2_in, W2) + b2[:, None, :]
        h2 = tf.nn.relu(z2)
        if use_dropout:
            h2 = h2 * d2
        pred = (tf.matmul(h2, W3) + b3[:, None, :])[..., 0]
        diff = pred - yb
        sse = sse + tf.reduce_sum(w * tf.square(diff), axis=1)
        # Backward pass of loss_m = sum_b w*diff^2 / count_m (Keras' mean over the real batch rows).
        g_out = (2.0 * diff * w / tf.maximum(count, 1.0)[:, None])[..., None]   # [M, B, 1]
        g_h2 = tf.matmul(g_out, W3, transpose_b=True)
        if use_dropout:
            g_h2 = g_h2 * d2
        g_z2 = tf.where(z2 > 0, g_h2, 0.0)                 # relu'(z) = [z > 0], as TF's ReluGrad
        g_h1 = tf.matmul(g_z2, W2, transpose_b=True)
        if use_dropout:
            g_h1 = g_h1 * d1
        g_z1 = tf.where(z1 > 0, g_h1, 0.0)
        grads = [tf.matmul(xb, g_z1, transpose_a=True), tf.reduce_sum(g_z1, axis=1),
                 tf.matmul(z2_in, g_z2, transpose_a=True), tf.reduce_sum(g_z2, axis=1),
                 tf.matmul(h2, g_out, transpose_a=True), tf.reduce_sum(g_out, axis=1)]
        # Adam exactly as keras/src/optimizers/adam.py, with a per-model step counter t.
        t_new = t + tf.cast(active, tf.float32)
        alpha = lr * tf.sqrt(1 - tf.pow(_BETA_2, t_new)) / (1 - tf.pow(_BETA_1, t_new))
        new_p, new_m, new_v = [], [], []
        for p, g, m_, v_ in zip(params, grads, mom, vel):
            bshape = [-1] + [1] * (len(p.shape) - 1)       # broadcast [M] over a weight
            keep_old = tf.reshape(~active, bshape)
            m2 = m_ + (g - m_) * (1 - _BETA_1)
            v2 = v_ + (tf.square(g) - v_) * (1 - _BETA_2)
            p2 = p - (m2 * tf.reshape(alpha, bshape)) / (tf.sqrt(v2) + _EPSILON)
            new_p.append(tf.where(keep_old, p, p2))
            new_m.append(tf.where(keep_old, m_, m2))
            new_v.append(tf.where(keep_old, v_, v2))
        return s + 1, new_p, new_m, new_v, t_new, sse

    params, mom, vel, t = state
    sse0 = tf.zeros_like(lr)
    _, params, mom, vel, t, sse = tf.while_loop(
        lambda s, *_: s < n_steps, step, (tf.constant(0), params, mom, vel, t, sse0))
    return (params, mom, vel, t), sse, _forward(params, X)


@functools.cache
def _compiled_epoch():
    """_train_epoch as one XLA-compiled TensorFlow function (built on first use)."""
    import tensorflow as tf

    return tf.function(_train_epoch, jit_compile=True)


def train_mlp_batch(X, y, train_mask, val_mask=None, *, neurons=64, batch_size=32,
                    learning_rate=1e-3, dropout=0.2, epochs=100, snapshot_epochs=None,
                    seed=42, progress=None) -> MLPBatch:
    """Train M independent MLPs of one width and batch size at once, each on its own rows."""
    import tensorflow as tf

    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.float32)
    M, N, F = X.shape
    train_mask = np.asarray(train_mask, bool)
    val_mask = np.zeros((M, N), bool) if val_mask is None else np.asarray(val_mask, bool)
    lr = np.broadcast_to(np.asarray(learning_rate, np.float32), (M,)).copy()
    rate = np.broadcast_to(np.asarray(dropout, np.float32), (M,)).copy()
    snapshots = set(snapshot_epochs or (epochs,))
    if not snapshots <= set(range(1, epochs + 1)):
        raise ValueError(f"snapshot_epochs must lie in 1..{epochs}: {sorted(snapshots)}")

    train_idx = [np.flatnonzero(train_mask[m]) for m in range(M)]
    n_train = np.array([len(i) for i in train_idx], np.float32)
    if n_train.min() == 0:
        raise ValueError("every model needs at least one training row")
    n_steps = int(np.ceil(n_train.max() / batch_size))      # models with fewer rows get padding
    rngs = [_order_rng(seed) for _ in range(M)]

    params = [tf.constant(w) for w in _init_weights(seed, M, F, neurons)]
    state = (params, [tf.zeros_like(p) for p in params], [tf.zeros_like(p) for p in params],
             tf.zeros([M], tf.float32))
    use_dropout = bool((rate > 0).any())
    consts = dict(X=tf.constant(X), y=tf.constant(y), lr=tf.constant(lr), rate=tf.constant(rate),
                  use_dropout=use_dropout)

    n_val = val_mask.sum(axis=1)
    loss_hist, val_hist = np.zeros((epochs, M)), np.full((epochs, M), np.nan)
    predictions, weights = {}, {}
    for epoch in range(epochs):
        idx, valid = _batch_plan([_epoch_order(r, i) for r, i in zip(rngs, train_idx)],
                                 n_steps, batch_size)
        u1, u2 = _dropout_uniforms(seed, epoch, n_steps, batch_size, neurons, use_dropout)
        state, sse, preds = _compiled_epoch()(state, idx=tf.constant(idx), valid=tf.constant(valid),
                                         u1=u1, u2=u2, **consts)
        # Keras' epoch "loss" is the batch-size-weighted mean of batch losses = SSE / n_train.
        loss_hist[epoch] = sse.numpy() / n_train
        preds = preds.numpy()
        sq_err = np.where(val_mask, (preds.astype(np.float64) - y) ** 2, 0.0)
        has_val = n_val > 0
        val_hist[epoch, has_val] = sq_err.sum(axis=1)[has_val] / n_val[has_val]
        if epoch + 1 in snapshots:
            predictions[epoch + 1] = preds
            weights[epoch + 1] = [p.numpy() for p in state[0]]
        if progress is not None:
            progress(epoch + 1, epochs)
    return MLPBatch({"loss": loss_hist, "val_loss": val_hist}, predictions, weights)


def mlp_from_weights(weights, m, dropout=0.2, learning_rate=1e-3):
    """Model m of a trained batch as a plain keras.Sequential with the same weights."""
    n_features, neurons = weights[0].shape[1:]
    model = build_mlp(n_features, neurons, dropout, learning_rate)
    # Keras Dense weights are (kernel [in, out], bias [out]): the batch's, minus the model axis.
    model.set_weights([np.asarray(w[m]) for w in weights])
    return model


MLP_DEFAULT = {"learning_rate": 0.001, "dropout": 0.2, "neurons": 64, "batch_size": 32,
               "epochs": 100}
SEED_GRID = {"learning_rate": [0.001, 0.01], "dropout": [0.2, 0.3], "neurons": [64, 128],
             "batch_size": [16, 32], "epochs": [50, 100]}


def expand_grid(grid: dict) -> list:
    """All combinations of a parameter grid, as a list of config dicts (sklearn's order)."""
    from sklearn.model_selection import ParameterGrid

    return [dict(sorted(p.items())) for p in ParameterGrid(grid)]


def fold_arrays(df: pd.DataFrame, feature_set: str, splits):
    """Per split, X and standardized y fitted on its training rows only, masks and y (mean, std)."""
    X_df, y = df[feature_columns(feature_set)], log_streams(df)
    Xs, ys, train, val, stats = [], [], [], [], []
    for tr, va in splits:
        pre = make_preprocessor(feature_set).fit(X_df.iloc[tr])
        mu, sd = y[tr].mean(), y[tr].std()
        Xs.append(pre.transform(X_df))
        ys.append((y - mu) / sd)
        train.append(np.isin(np.arange(len(df)), tr))
        val.append(np.isin(np.arange(len(df)), va))
        stats.append((mu, sd))
    return np.stack(Xs), np.stack(ys), np.stack(train), np.stack(val), np.array(stats)


class Progress:
    """Prints progress as a line of milestones ('epoch 10/100 ...') without timings."""

    def __init__(self, label: str, total: int, every: int = 10):
        self.total, self.every, self.count = total, max(1, every), 0
        print(label, end=": ", flush=True)

    def step(self, n: int = 1) -> None:
        before, self.count = self.count, self.count + n
        if self.count // self.every > before // self.every or self.count == self.total:
            print(f"{self.count}/{self.total}", end=" " if self.count < self.total else "\n",
                  flush=True)


@dataclass
class MLPCV:
    """Cross-validation of MLP configurations: metrics per fold, mean loss curves and
    validation predictions ([splits, rows], NaN off-fold) per configuration index."""

    per_fold: pd.DataFrame
    curves: dict
    predictions: dict


def cross_validate_mlp(df, feature_set, splits, configs=(MLP_DEFAULT,), seed=42, label="MLP"):
    """Cross-validate MLP configurations on all splits at once with the fast training path."""
    X, y, train, val, stats = fold_arrays(df, feature_set, splits)
    y_log = log_streams(df)
    configs = [dict(c) for c in configs]
    groups = {}
    for i, c in enumerate(configs):  # one batch of models per (width, batch size)
        groups.setdefault((c["neurons"], c["batch_size"]), []).append(i)
    n_splits = len(splits)
    total_epochs = sum(max(configs[i]["epochs"] for i in g) for g in groups.values())
    progress = Progress(f"{label}: {len(configs)} config(s) × {n_splits} folds, epochs",
                        total_epochs, every=max(1, total_epochs // 10))
    rows, curves, predictions = [], {}, {}
    for (neurons, batch_size), members in groups.items():
        # Configurations that differ only in epochs share one training run (read at snapshots).
        runs = sorted({(configs[i]["learning_rate"], configs[i]["dropout"]) for i in members})
        epochs = max(configs[i]["epochs"] for i in members)
        k = len(runs)  # model m trains run m // n_splits on split m % n_splits
        batch = train_mlp_batch(
            np.tile(X, (k, 1, 1)), np.tile(y, (k, 1)), np.tile(train, (k, 1)),
            np.tile(val, (k, 1)), neurons=neurons, batch_size=batch_size, epochs=epochs,
            learning_rate=np.repeat([r[0] for r in runs], n_splits),
            dropout=np.repeat([r[1] for r in runs], n_splits), seed=seed,
            snapshot_epochs=sorted({configs[i]["epochs"] for i in members}),
            progress=lambda done, _: progress.step())
        for ci in members:
            c = configs[ci]
            first = runs.index((c["learning_rate"], c["dropout"])) * n_splits
            scaled = batch.predictions[c["epochs"]][first:first + n_splits]
            predictions[ci] = np.where(val, scaled * stats[:, 1:] + stats[:, :1], np.nan)
            for fold in range(n_splits):
                rows.append({"config": ci, **c, "fold": fold, **regression_metrics(
                    y_log[val[fold]], predictions[ci][fold, val[fold]])})
            history = {key: batch.history[key][: c["epochs"], first:first + n_splits].mean(axis=1)
                       for key in ("loss", "val_loss")}
            epochs_index = pd.RangeIndex(1, c["epochs"] + 1, name="epoch")
            curves[ci] = pd.DataFrame(history, index=epochs_index)
    per_fold = pd.DataFrame(rows).sort_values(["config", "fold"], ignore_index=True)
    return MLPCV(per_fold, curves, predictions)


def grid_table(per_fold: pd.DataFrame, params=tuple(SEED_GRID)) -> pd.DataFrame:
    """GridSearchCV-style results: one row per configuration, sorted by mean validation R²."""
    scores = per_fold.pivot_table(index=list(params), columns="fold", values="r2")
    scores.columns = [f"split{c}_r2" for c in scores.columns]
    table = scores.assign(mean_r2=scores.mean(axis=1), std_r2=scores.std(axis=1))
    mse = per_fold.groupby(list(params))["mse"].mean().rename("mean_mse")
    table = table.join(mse).sort_values("mean_r2", ascending=False).reset_index()
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


@dataclass
class FittedMLP:
    """An MLP trained on a whole training set, with its preprocessing: predicts log10(streams)."""

    feature_set: str
    config: dict
    preprocessor: object
    model: object  # keras.Sequential
    target_mean: float
    target_std: float
    history: pd.DataFrame = None

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        X = self.preprocessor.transform(df[feature_columns(self.feature_set)]).astype(np.float32)
        scaled = self.model(X, training=False).numpy().ravel()  # no predict() overhead
        return scaled * self.target_std + self.target_mean


def fit_mlp(train_df: pd.DataFrame, feature_set: str, config=MLP_DEFAULT, seed=42) -> FittedMLP:
    """Train one MLP configuration on all training rows (fast path) with its preprocessing."""
    X_df, y = train_df[feature_columns(feature_set)], log_streams(train_df)
    pre = make_preprocessor(feature_set).fit(X_df)
    mu, sd = y.mean(), y.std()
    batch = train_mlp_batch(pre.transform(X_df)[None], ((y - mu) / sd)[None],
                            np.ones((1, len(y)), bool), neurons=config["neurons"],
                            batch_size=config["batch_size"], epochs=config["epochs"],
                            learning_rate=config["learning_rate"], dropout=config["dropout"],
                            seed=seed)
    model = mlp_from_weights(batch.weights[config["epochs"]], 0, config["dropout"],
                             config["learning_rate"])
    history = pd.DataFrame({"loss": batch.history["loss"][:, 0]},
                           index=pd.RangeIndex(1, config["epochs"] + 1, name="epoch"))
    return FittedMLP(feature_set, dict(config), pre, model, float(mu), float(sd), history)


def permutation_importance(predict, df: pd.DataFrame, columns, n_repeats=5, seed=42):
    """Drop in R² (log10 streams) when one column is shuffled, mean and std over repeats."""
    rng = np.random.default_rng(seed)
    y = log_streams(df)
    base = regression_metrics(y, predict(df))["r2"]
    rows = []
    for col in columns:
        drops = []
        for _ in range(n_repeats):
            shuffled = df.copy()
            shuffled[col] = df[col].to_numpy()[rng.permutation(len(df))]
            drops.append(base - regression_metrics(y, predict(shuffled))["r2"])
        rows.append({"feature": col, "r2_drop": np.mean(drops), "r2_drop_std": np.std(drops)})
    return pd.DataFrame(rows).sort_values("r2_drop", ascending=False, ignore_index=True)


def save_model(fitted: FittedMLP, reference_date, folder) -> Path:
    """Save a fitted MLP (Keras file) and its preprocessing (joblib) into a folder."""
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fitted.model.save(folder / "mlp.keras")
    extras = {k: getattr(fitted, k) for k in
              ("feature_set", "config", "preprocessor", "target_mean", "target_std")}
    joblib.dump({**extras, "reference_date": pd.Timestamp(reference_date)},
                folder / "preprocessing.joblib")
    return folder


def predict_streams(frame: pd.DataFrame, model_dir=None) -> pd.Series:
    """Predicted streams for rows in the raw file's schema, from the model notebook 06 saved."""
    import joblib
    import keras

    if model_dir is not None:
        candidates = [Path(model_dir)]
    else:  # the notebooks' default output, then the main job's (`make run`)
        candidates = [resolve_run().models_dir / "final", BUILD_DIR / "run" / "models" / "final"]
    folder = next((c for c in candidates if (c / "mlp.keras").is_file()), None)
    if folder is None:
        raise DataError(f"No saved model in {' or '.join(map(str, candidates))}. Run notebook "
                        "06_results first (or the series with `make run`), or pass model_dir=.")
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError("predict_streams needs a non-empty DataFrame with the CSV's columns.")
    saved = joblib.load(folder / "preprocessing.joblib")
    rows = prepare_rows(frame, saved["reference_date"], saved["feature_set"])
    fitted = FittedMLP(saved["feature_set"], saved["config"], saved["preprocessor"],
                       keras.models.load_model(folder / "mlp.keras", compile=False),
                       saved["target_mean"],
                       saved["target_std"])
    return pd.Series(10 ** fitted.predict(rows), index=frame.index, name="predicted_streams")


def prepare_rows(frame: pd.DataFrame, reference_date, feature_set: str) -> pd.DataFrame:
    """Model inputs for new rows (raw schema, no target needed), parsed as clean() does."""
    inputs = feature_columns(feature_set)
    needed = [c for c in REQUIRED_COLUMNS if c in inputs or c in DATE_COLUMNS]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"Rows lack column(s) the model needs: {', '.join(missing)}.")
    df = frame.copy()
    for col in [c for c in needed if c in NUMERIC_COLUMNS]:
        parsed = parse_numbers(df[col].astype("str").where(df[col].notna()))
        bad = parsed.isna() & df[col].notna()
        if bad.any() or (parsed.isna().any() and col != "in_shazam_charts"):
            example = df.loc[bad | parsed.isna(), col].iloc[0]
            raise DataError(f"Column '{col}' has a missing or non-numeric value ({example!r}).")
        df[col] = parsed
    df["key"] = pd.Categorical(df["key"].fillna("C"), categories=[*KEYS, "unknown"])
    df["mode"] = pd.Categorical(df["mode"], categories=MODES)
    df["release_date"] = release_dates(df)
    if df["release_date"].isna().any():
        raise DataError("Some rows have an impossible release date (year/month/day).")
    df["days_since_release"] = (pd.Timestamp(reference_date) - df["release_date"]).dt.days.clip(0)
    return add_features(df)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def use_plot_style() -> None:
    """One look for every figure of the series (seaborn whitegrid, PNG-friendly size)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.figsize": (9, 4), "figure.dpi": 80, "savefig.dpi": 80})


def save_figure(fig, run: Run, name: str) -> None:
    """Save a figure as PNG in the run's figures folder (the README shows the committed ones)."""
    path = run.figures_dir / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same bytes every run


def plot_target_distribution(streams: pd.Series):
    """Histogram of streams on a linear and on a log10 scale, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    axes[0].hist(streams / 1e9, bins=40)
    axes[0].set(xlabel="streams (billions)", ylabel="tracks", title="as counted")
    axes[1].hist(np.log10(streams), bins=40)
    axes[1].set(xlabel="log10(streams)", title="log10 scale")
    fig.tight_layout()
    return fig


def plot_correlation_heatmap(corr: pd.DataFrame):
    """Heatmap of a correlation matrix with values written in the cells."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(11, 9))
    sns.heatmap(corr, cmap="vlag", center=0, vmin=-1, vmax=1, annot=True, fmt=".1f",
                annot_kws={"size": 7}, cbar_kws={"shrink": 0.6}, ax=ax)
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
        ax.set_ylabel("log10(streams)")
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
    ax.set(ylabel=f"CV {metric} (log10 streams)", xlabel="feature set")
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(ncol=len(models), fontsize=8)
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


def plot_loss_curves(curves: dict, title=""):
    """Training and validation loss per epoch (mean over folds), one colour per curve set."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, curve), color in zip(curves.items(), colors):
        ax.plot(curve.index, curve["loss"], color=color, ls="--", label=f"{label}: training")
        if "val_loss" in curve:
            ax.plot(curve.index, curve["val_loss"], color=color, label=f"{label}: validation")
    ax.set(xlabel="epoch", ylabel="MSE (standardized log10 streams)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def knob_effects(table: pd.DataFrame, params=tuple(SEED_GRID)) -> pd.DataFrame:
    """For each hyperparameter: mean CV R² at each of its values, and the spread between them."""
    rows = []
    for p in params:
        means = table.groupby(p)["mean_r2"].mean()
        rows.append({"knob": p, "values": " / ".join(f"{v:g}" for v in means.index),
                     "mean R² at each": " / ".join(f"{m:.3f}" for m in means),
                     "effect": means.max() - means.min(), "best value": f"{means.idxmax():g}"})
    return pd.DataFrame(rows).set_index("knob").sort_values("effect", ascending=False)


def plot_knob_effects(table: pd.DataFrame, params=tuple(SEED_GRID)):
    """One panel per hyperparameter: every configuration's CV R² at each value, with the mean."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(12, 3), sharey=True)
    for ax, p in zip(axes, params):
        values = sorted(table[p].unique())
        for i, v in enumerate(values):
            scores = table.loc[table[p] == v, "mean_r2"]
            ax.scatter(np.full(len(scores), i), scores, s=12, alpha=0.6)
            ax.hlines(scores.mean(), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_xlabel(p)
    axes[0].set_ylabel("mean CV R²")
    fig.tight_layout()
    return fig


def plot_interactions(table: pd.DataFrame, pairs):
    """Heatmaps of mean CV R² for pairs of hyperparameters (averaged over the other knobs)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3))
    for ax, (a, b) in zip(np.atleast_1d(axes), pairs):
        grid = table.pivot_table(index=a, columns=b, values="mean_r2", aggfunc="mean")
        sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", cbar=False, ax=ax)
    fig.tight_layout()
    return fig


def plot_actual_vs_predicted(y_true, predictions: dict):
    """Predicted against actual log10 streams, one panel per model, with the diagonal."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(predictions), figsize=(4 * len(predictions), 3.8),
                             sharex=True, sharey=True, squeeze=False)
    lo, hi = np.min(y_true) - 0.2, np.max(y_true) + 0.2
    for ax, (label, pred) in zip(axes.flat, predictions.items()):
        ax.scatter(y_true, pred, s=8, alpha=0.5)
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set(title=label, xlabel="actual log10(streams)")
    axes.flat[0].set_ylabel("predicted log10(streams)")
    fig.tight_layout()
    return fig


def plot_residuals(y_true, predictions: dict):
    """Residual (predicted − actual) against the actual value, one panel per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(predictions), figsize=(4 * len(predictions), 3.2),
                             sharey=True, squeeze=False)
    for ax, (label, pred) in zip(axes.flat, predictions.items()):
        ax.scatter(y_true, np.asarray(pred) - y_true, s=8, alpha=0.5)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=label, xlabel="actual log10(streams)")
    axes.flat[0].set_ylabel("residual (log10)")
    fig.tight_layout()
    return fig


def plot_importance(importances: dict, ncols=3):
    """Permutation importance bars (drop in R²), one panel per model/feature-set label."""
    import matplotlib.pyplot as plt

    nrows = -(-len(importances) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (label, imp) in zip(axes.flat, importances.items()):
        imp = imp.head(8).iloc[::-1]
        ax.barh(imp["feature"], imp["r2_drop"], xerr=imp["r2_drop_std"], capsize=2)
        ax.set(title=label, xlabel="drop in test R² when shuffled")
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes.flat[len(importances):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig
