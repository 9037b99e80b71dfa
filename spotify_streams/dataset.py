"""Reading the CSV and cleaning it: every quirk of the file, every refusal with its reason."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spotify_streams.config import DOWNLOAD_HINT, RAW_DATA, Run, resolve_run
from spotify_streams.errors import DataError
from spotify_streams.features import add_features
from spotify_streams.files import replacing
from spotify_streams.schema import (
    DATE_COLUMNS,
    KEYS,
    MIN_PLAUSIBLE_STREAMS,
    MIN_PLAUSIBLE_YEAR,
    MODES,
    NAME_COLUMNS,
    NUMERIC_COLUMNS,
    PLATFORM_COLUMNS,
    REQUIRED_COLUMNS,
    RESERVED_COLUMNS,
    TARGET,
    VALUE_RANGES,
)


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
