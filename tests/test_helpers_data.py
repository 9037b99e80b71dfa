"""Unit tests for the data layer of helpers.py: every quirk of the file and every bad input."""

import hashlib
import importlib.util

import numpy as np
import pandas as pd
import pytest

import helpers
from helpers import DataError, clean, load_raw

SAMPLE_SCRIPT = helpers.ROOT / "scripts" / "synthetic_sample.py"
HEADER = ",".join(f'"{c}"' if "," in c else c for c in helpers.REQUIRED_COLUMNS)


def row(name="Song", artist="Artist", streams="123456789", year="2022", key="A",
        shazam="3", deezer="12", mode="Major", playlists="100"):
    """One CSV line in the original column order."""
    values = [name, artist, "1", year, "5", "20", playlists, "4", streams, "30", "2", deezer, "1",
              shazam, "120", key, mode, "50", "50", "50", "10", "0", "10", "5"]
    return ",".join(f'"{v}"' if "," in v else v for v in values)


def write(tmp_path, lines, name="data.csv", encoding="utf-8", newline="\n", bom=False):
    """Write CSV lines to a file and return its path."""
    path = tmp_path / name
    data = newline.join(lines).encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data + newline.encode())
    return path


def good_lines(n=5):
    return [HEADER] + [row(name=f"Song {i}", streams=str(10_000_000 * (i + 1))) for i in range(n)]


@pytest.fixture(scope="module")
def sample_clean():
    return clean(load_raw(helpers.SAMPLE_DATA))


# --- reading: real-world variants of the file --------------------------------------------------

def test_original_style_bytes_read_without_error(tmp_path):
    path = tmp_path / "orig.csv"
    body = "\r\n".join(good_lines()).encode()
    body = body.replace(b"Song 0", b"Beyonc\xef\xbf").replace(b"Song 1", b"Caf\xef\xbf\xbd")
    path.write_bytes(body + b"\r\n")
    frame = load_raw(path)
    assert len(frame) == 5
    assert frame.loc[0, "track_name"] == "Beyonc\ufffd"
    assert frame.loc[1, "track_name"] == "Caf\ufffd"


@pytest.mark.parametrize("variant", ["bom", "lf", "crlf", "cp1252", "reordered", "trailing"])
def test_variants_give_the_same_frame(tmp_path, variant):
    lines = good_lines()
    lines[1] = lines[1].replace("Song 0", "Canción")
    reference = load_raw(write(tmp_path, lines, "ref.csv"))
    if variant == "bom":
        path = write(tmp_path, lines, bom=True)
    elif variant == "lf":
        path = write(tmp_path, lines, newline="\n")
    elif variant == "crlf":
        path = write(tmp_path, lines, newline="\r\n")
    elif variant == "cp1252":
        path = write(tmp_path, lines, encoding="cp1252")
    elif variant == "reordered":
        frame = pd.read_csv(write(tmp_path, lines, "tmp.csv"), dtype=str)
        path = tmp_path / "data.csv"
        frame[frame.columns[::-1]].to_csv(path, index=False)
    else:
        path = write(tmp_path, [line + ",," for line in lines])
    pd.testing.assert_frame_equal(load_raw(path), reference)


def test_cp1252_file_with_an_accent_next_to_a_symbol_keeps_its_accents(tmp_path):
    """'é’' is a valid-looking UTF-8 lead/continuation pair in CP1252 bytes; the file as a
    whole is CP1252 (its other accents stand alone), so it is read as CP1252 and logged."""
    lines = good_lines()
    lines[1] = lines[1].replace("Song 0", "Café’s Song")
    lines[2] = lines[2].replace("Song 1", "Canción")
    lines[3] = lines[3].replace("Artist", "Beyoncé")
    frame = load_raw(write(tmp_path, lines, encoding="cp1252"))
    assert frame["track_name"].tolist()[:2] == ["Café’s Song", "Canción"]
    assert frame.loc[2, "artist(s)_name"] == "Beyoncé"
    steps = clean(frame).steps_table().set_index("step")
    assert steps.loc["file encoding", "rows"] == 3
    assert "CP1252" in steps.loc["file encoding", "action"]
    assert steps.loc["encoding damage in names", "rows"] == 0


def test_damaged_utf8_file_stays_utf8(tmp_path):
    """Mostly UTF-8 with one broken byte (like the original file): UTF-8 wins, one marker."""
    lines = good_lines()
    lines[1] = lines[1].replace("Song 0", "Canción")
    path = tmp_path / "d.csv"
    path.write_bytes("\n".join(lines).encode().replace(b"Song 1", b"Caf\xe9"))
    frame = load_raw(path)
    assert frame["track_name"].tolist()[:2] == ["Canción", "Caf\ufffd"]
    assert "file encoding" not in clean(frame).steps_table()["step"].tolist()


def test_thousands_separators_with_and_without(tmp_path):
    path = write(tmp_path, [HEADER, row(deezer="1,021", shazam="2,000"), row(name="B", deezer="7")])
    data = clean(load_raw(path)).data
    assert data["in_deezer_playlists"].tolist() == [1021, 7]
    assert data.loc[0, "in_shazam_charts"] == 2000


def test_load_raw_never_modifies_the_file(tmp_path):
    path = write(tmp_path, good_lines(), newline="\r\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    clean(load_raw(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# --- bad inputs ----------------------------------------------------------------------------------

def test_missing_file_says_how_to_download(tmp_path):
    with pytest.raises(DataError, match="not found.*kaggle"):
        load_raw(tmp_path / "spotify-2023.csv")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"   \r\n", "empty"),
    (b"\xef\xbb\xbf\n", "empty"),
    ((HEADER + "\n").encode(), "no data rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00binary", "not a CSV"),
    (b"a,b,c\n1,2,3\n", "does not look like"),
])
def test_unusable_files_raise_data_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_raw(path)


def test_a_folder_is_not_reported_as_missing(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a CSV file"):
        load_raw(tmp_path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file_gets_the_right_hint(tmp_path, encoding):
    path = write(tmp_path, good_lines(), encoding=encoding)
    with pytest.raises(DataError, match="UTF-16.*CSV UTF-8") as error:
        load_raw(path)
    assert "unzip" not in str(error.value).lower()


def test_zip_archive_is_told_to_unzip(tmp_path):
    import zipfile

    path = tmp_path / "spotify.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("spotify-2023.csv", "\n".join(good_lines()))
    with pytest.raises(DataError, match="ZIP archive. Unzip it"):
        load_raw(path)


@pytest.mark.parametrize("column", helpers.RESERVED_COLUMNS)
def test_a_column_that_cleaning_adds_is_refused(tmp_path, column):
    lines = [f"{HEADER},{column}"] + [f"{line},7" for line in good_lines()[1:]]
    with pytest.raises(DataError, match=f"named {column}, which cleaning adds"):
        load_raw(write(tmp_path, lines))


def test_other_extra_columns_are_kept_after_the_schema(tmp_path):
    lines = [f"extra,{HEADER}"] + [f"x,{line}" for line in good_lines()[1:]]
    frame = load_raw(write(tmp_path, lines))
    assert frame.columns.tolist() == [*helpers.REQUIRED_COLUMNS, "extra"]


def test_rows_to_predict_need_no_streams_column(tmp_path):
    frame = pd.read_csv(write(tmp_path, good_lines(), "ok.csv"), dtype=str)
    path = tmp_path / "new.csv"
    frame.drop(columns="streams").to_csv(path, index=False)
    with pytest.raises(DataError, match="lacks required column.*streams"):
        load_raw(path)
    assert "streams" not in load_raw(path, target=False).columns


def test_missing_columns_are_named(tmp_path):
    frame = pd.read_csv(write(tmp_path, good_lines(), "ok.csv"), dtype=str)
    path = tmp_path / "bad.csv"
    frame.drop(columns=["bpm", "mode"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="bpm, mode"):
        load_raw(path)


def test_non_numeric_column_is_named_with_an_example(tmp_path):
    lines = good_lines()
    lines[2] = row(name="X", playlists="lots")
    with pytest.raises(DataError, match=r"'in_spotify_playlists'.*'lots'"):
        clean(load_raw(write(tmp_path, lines)))


@pytest.mark.parametrize("column, value", [("key", "H"), ("mode", "minor")])
def test_unknown_key_or_mode_is_named(tmp_path, column, value):
    lines = good_lines() + [row(name="Odd", **{column: value})]
    with pytest.raises(DataError, match=rf"'{column}'.*'{value}'.*allowed"):
        clean(load_raw(write(tmp_path, lines)))


def test_missing_mode_is_dropped_and_counted(tmp_path):
    lines = good_lines() + [row(name="NoMode", mode="")]
    result = clean(load_raw(write(tmp_path, lines)))
    assert "NoMode" not in result.data["track_name"].tolist()
    assert result.steps_table().set_index("step").loc["missing numbers or mode", "rows"] == 1


def test_target_without_usable_rows(tmp_path):
    lines = [HEADER] + [row(name=f"S{i}", streams="") for i in range(3)]
    with pytest.raises(DataError, match="usable 'streams'"):
        clean(load_raw(write(tmp_path, lines)))


def test_target_that_is_mostly_text(tmp_path):
    lines = [HEADER] + [row(name=f"S{i}", streams="n/a") for i in range(3)]
    with pytest.raises(DataError, match="'streams' holds 3 value.*must hold stream counts"):
        clean(load_raw(write(tmp_path, lines)))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- cleaning: each quirk -----------------------------------------------------------------------

def test_corrupted_streams_row_is_dropped_and_counted(tmp_path):
    lines = good_lines() + [row(name="Bad", streams="BPM110KeyAModeMajor")]
    result = clean(load_raw(write(tmp_path, lines)))
    steps = result.steps_table().set_index("step")
    assert steps.loc["corrupted streams value", "rows"] == 1
    assert "Bad" not in result.data["track_name"].tolist()
    assert result.data["streams"].dtype == np.int64


def test_missing_key_becomes_c_only_when_c_never_appears(tmp_path):
    lines = good_lines() + [row(name="NoKey", key="")]
    data = clean(load_raw(write(tmp_path, lines))).data
    assert data.set_index("track_name").loc["NoKey", "key"] == "C"
    lines.append(row(name="HasC", key="C"))
    data = clean(load_raw(write(tmp_path, lines))).data
    assert data.set_index("track_name").loc["NoKey", "key"] == "unknown"


def test_missing_shazam_stays_missing(tmp_path):
    lines = good_lines() + [row(name="NoShazam", shazam="")]
    result = clean(load_raw(write(tmp_path, lines)))
    assert result.data["in_shazam_charts"].isna().sum() == 1
    assert result.steps_table().set_index("step").loc["missing in_shazam_charts", "rows"] == 1


def test_duplicates_keep_the_row_with_more_streams(tmp_path):
    lines = good_lines() + [row(name="Twin", streams="500000000", playlists="10"),
                            row(name="twin ", streams="700000000", playlists="5")]
    result = clean(load_raw(write(tmp_path, lines)))
    twins = result.data[result.data["track_name"].str.casefold() == "twin"]
    assert twins["streams"].tolist() == [700_000_000]
    assert result.steps_table().set_index("step").loc["duplicate track/artist pairs", "rows"] == 1


def test_the_target_based_decisions_can_be_varied(tmp_path):
    """Notebook 06 measures what the two decisions that look at streams change."""
    lines = good_lines() + [row(name="Twin", streams="500000000", playlists="10"),
                            row(name="twin ", streams="700000000", playlists="5"),
                            row(name="Tiny", streams="2762")]
    raw = load_raw(write(tmp_path, lines))
    first = clean(raw, keep_repeat="first listed").data
    assert first.loc[first["track_name"].str.casefold() == "twin", "streams"].tolist() == [
        500_000_000]
    assert "Tiny" in clean(raw, min_streams=0).data["track_name"].tolist()
    assert "Tiny" not in clean(raw).data["track_name"].tolist()
    with pytest.raises(ValueError, match="keep_repeat='last'"):
        clean(raw, keep_repeat="last")


def test_implausible_streams_and_year_are_dropped(tmp_path):
    lines = good_lines() + [row(name="Tiny", streams="2762"), row(name="Old", year="1930"),
                            row(name="Classic", year="1942")]
    names = clean(load_raw(write(tmp_path, lines))).data["track_name"].tolist()
    assert "Tiny" not in names and "Old" not in names and "Classic" in names


def test_types_and_release_date(tmp_path):
    data = clean(load_raw(write(tmp_path, good_lines()))).data
    assert isinstance(data["key"].dtype, pd.CategoricalDtype)
    assert list(data["mode"].cat.categories) == ["Major", "Minor"]
    assert data.loc[0, "release_date"] == pd.Timestamp("2022-05-20")
    assert data["days_since_release"].min() == 0


def test_encoding_damage_runs_collapse_to_one_marker(tmp_path):
    path = tmp_path / "d.csv"
    body = "\n".join(good_lines()).encode().replace(b"Song 0", b"L\xef\xbf\xbd\xef\xbf\xbd\xef\xbf")
    path.write_bytes(body)
    result = clean(load_raw(path))
    assert result.data.loc[0, "track_name"] == "L\ufffd"
    assert result.steps_table().set_index("step").loc["encoding damage in names", "rows"] == 1


def test_clean_does_not_change_its_input(tmp_path):
    raw = load_raw(write(tmp_path, good_lines()))
    copy = raw.copy()
    clean(raw)
    pd.testing.assert_frame_equal(raw, copy)


def test_load_songs_reads_what_save_clean_wrote(tmp_path, sample_clean):
    run = helpers.resolve_run(helpers.SAMPLE_DATA, tmp_path)
    helpers.save_clean(sample_clean, run.processed_path)
    back = helpers.load_songs(run)
    pd.testing.assert_frame_equal(back.drop(columns="release_weekday"), sample_clean.data,
                                  check_dtype=False)
    assert back["key"].dtype == sample_clean.data["key"].dtype
    assert back["release_weekday"].notna().all()


def test_load_songs_rebuilds_missing_cleaned_data_and_says_so(tmp_path, sample_clean, capsys):
    """A notebook opened alone (no 02 before it) rebuilds the cleaned table as 02 does."""
    run = helpers.resolve_run(helpers.SAMPLE_DATA, tmp_path)
    songs = helpers.load_songs(run)
    assert "Cleaned data not found" in capsys.readouterr().out and run.processed_path.is_file()
    pd.testing.assert_frame_equal(songs.drop(columns="release_weekday"), sample_clean.data,
                                  check_dtype=False)
    helpers.load_songs(run)
    assert capsys.readouterr().out == ""  # present: read, not rebuilt


# --- the synthetic sample ------------------------------------------------------------------------

def test_committed_sample_is_what_the_generator_makes():
    spec = importlib.util.spec_from_file_location("synthetic_sample", SAMPLE_SCRIPT)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert helpers.SAMPLE_DATA.read_bytes() == generator.make_synthetic_sample()


def test_sample_has_every_quirk_of_the_real_file(sample_clean):
    raw_bytes = helpers.SAMPLE_DATA.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw_bytes.decode("utf-8")
    assert b"\r\n" in raw_bytes
    steps = sample_clean.steps_table().set_index("step")["rows"]
    for step in ["encoding damage in names", "thousands separators", "corrupted streams value",
                 "missing key", "missing in_shazam_charts", "streams below 100,000",
                 "release year before 1940"]:
        assert steps[step] >= 1, step
    assert steps["duplicate track/artist pairs"] == 4


# --- paths ---------------------------------------------------------------------------------------

def test_resolve_run_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "RAW_DATA", tmp_path / "absent.csv")
    run = helpers.resolve_run()
    assert run.is_synthetic and not run.is_real
    assert run.metrics_dir == helpers.BUILD_DIR / "synthetic" / "metrics"
    assert "SYNTHETIC" in helpers.data_banner(run)


def test_resolve_run_with_output_dir_keeps_everything_there(tmp_path):
    run = helpers.resolve_run(helpers.SAMPLE_DATA, tmp_path / "out")
    assert run.metrics_dir == tmp_path / "out" / "metrics"
    assert run.processed_path.is_relative_to(tmp_path / "out")
    assert run.models_dir.is_relative_to(tmp_path / "out")


def test_a_quick_run_on_the_real_file_never_writes_the_committed_reports(tmp_path, monkeypatch):
    """papermill -p QUICK True on the real file used to rewrite reports/ with smoke results."""
    real = write(tmp_path, good_lines(), "spotify-2023.csv")
    monkeypatch.setattr(helpers, "REAL_SHA256", helpers.file_sha256(real))
    monkeypatch.delenv("SERIES_REPORTS_DIR", raising=False)  # set by conftest.py
    full, quick = helpers.resolve_run(real), helpers.resolve_run(real, quick=True)
    assert full.is_real and full.metrics_dir == helpers.REPORTS_DIR / "metrics"
    assert quick.is_real and quick.output_dir == helpers.BUILD_DIR / "real-quick"
    assert not quick.metrics_dir.is_relative_to(helpers.REPORTS_DIR)
    assert not quick.figures_dir.is_relative_to(helpers.REPORTS_DIR)


def test_series_reports_dir_redirects_the_committed_results(tmp_path, monkeypatch):
    """The test session validates the committed notebooks without touching reports/."""
    real = write(tmp_path, good_lines(), "spotify-2023.csv")
    monkeypatch.setattr(helpers, "REAL_SHA256", helpers.file_sha256(real))
    monkeypatch.setenv("SERIES_REPORTS_DIR", str(tmp_path / "copy"))
    run = helpers.resolve_run(real)
    assert run.metrics_dir == tmp_path / "copy" / "metrics"
    assert run.figures_dir == tmp_path / "copy" / "figures"


def test_other_csv_gets_its_own_folder_and_a_note(tmp_path):
    path = write(tmp_path, good_lines(), "mine.csv")
    run = helpers.resolve_run(path)
    assert run.output_dir == helpers.BUILD_DIR / "mine"
    assert "not the original" in helpers.data_banner(run)


def test_check_data_accepts_the_sample_and_refuses_a_tiny_file(tmp_path):
    helpers.check_data(helpers.SAMPLE_DATA)
    with pytest.raises(DataError, match="Only 5 usable songs"):
        helpers.check_data(write(tmp_path, good_lines(5)))


# --- implausible values: flagged and excluded, never silently used -----------------------------

KEPT_ROW = 3  # a sample row clean() keeps (checked in test_no_new_steps_for_a_clean_file)


@pytest.fixture(scope="module")
def sample_raw():
    return load_raw(helpers.SAMPLE_DATA)


def test_future_release_years_are_dropped_and_do_not_move_the_reference_date(sample_raw):
    before = clean(sample_raw)
    typos = before.data["raw_row"].iloc[:10].tolist()  # rows clean() otherwise keeps
    raw = sample_raw.copy()
    raw.loc[typos, "released_year"] = "2030"
    result = clean(raw, as_of="2026-11-26")
    assert result.reference_date == before.reference_date  # the latest plausible date
    step = "release date after 2026-11-26"
    assert result.steps_table().set_index("step").loc[step, "rows"] == 10
    assert sorted(result.dropped.loc[result.dropped["reason"] == step, "raw_row"]) == typos
    kept = before.data[~before.data["raw_row"].isin(typos)].reset_index(drop=True)
    pd.testing.assert_series_equal(result.data["days_since_release"], kept["days_since_release"])


def test_future_is_judged_against_today_by_default(sample_raw):
    raw = sample_raw.copy()
    raw.loc[raw.index[0], "released_year"] = str(pd.Timestamp.today().year + 1)
    steps = clean(raw).steps_table()["step"]
    assert steps.str.startswith("release date after ").sum() == 1


@pytest.mark.parametrize("column, value", [
    ("in_spotify_playlists", "-1"), ("in_spotify_playlists", "-5"), ("in_deezer_charts", "-2"),
    ("in_shazam_charts", "-3"), ("danceability_%", "1000000"), ("energy_%", "101"),
    ("bpm", "1000000000"), ("bpm", "0"), ("artist_count", "0"), ("in_apple_charts", "1.5"),
])
def test_out_of_range_values_are_dropped_and_logged(sample_raw, column, value):
    raw = sample_raw.copy()
    raw.loc[KEPT_ROW, column] = value
    result = clean(raw)
    assert KEPT_ROW not in result.data["raw_row"].tolist()
    steps = result.steps_table().set_index("step")
    assert steps.loc["values out of range", "rows"] == 1
    assert column in steps.loc["values out of range", "action"]
    assert result.dropped.set_index("raw_row").loc[KEPT_ROW, "reason"] == "values out of range"


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_infinite_numbers_are_refused_like_text(sample_raw, value):
    raw = sample_raw.copy()
    raw.loc[KEPT_ROW, "in_spotify_playlists"] = value
    with pytest.raises(DataError, match=rf"'in_spotify_playlists'.*{value!r}"):
        clean(raw)


def test_no_new_steps_for_a_clean_file(sample_clean):
    """The new rules log a step only when they drop rows (the real file's log is unchanged)."""
    assert KEPT_ROW in sample_clean.data["raw_row"].tolist()
    steps = sample_clean.steps_table()["step"].tolist()
    assert "values out of range" not in steps and "file encoding" not in steps
    assert not any(s.startswith("release date after") for s in steps)


def test_a_negative_count_passes_the_check_and_every_model_input_is_finite(tmp_path, sample_raw):
    """One in_spotify_playlists = -1 used to reach log1p in notebook 03 ('Input X contains
    infinity'); now clean() drops the row, so check_data and the preprocessing both succeed."""
    raw = sample_raw.copy()
    raw.loc[KEPT_ROW, "in_spotify_playlists"] = "-1"
    path = tmp_path / "negative.csv"
    raw.to_csv(path, index=False)
    helpers.check_data(path)
    songs = helpers.add_features(clean(load_raw(path)).data)
    features = helpers.make_preprocessor("full").fit_transform(songs[helpers.FEATURE_SETS["full"]])
    assert np.isfinite(features).all()


# --- notebook parameters -------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, message", [
    ("QUICK", "yes", "QUICK must be True or False, not 'yes' \\(str\\)"),
    ("QUICK", 1, "QUICK must be True or False"),
    ("SEED", "42", "SEED must be a whole number"),
    ("SEED", -1, "SEED must be a whole number from 0"),
    ("SEED", 1.5, "SEED must be a whole number"),
    ("SEED", True, "SEED must be a whole number"),
    ("N_JOBS", 0, "N_JOBS must be a positive whole number"),
    ("N_JOBS", -1, "N_JOBS must be a positive whole number"),
    ("N_JOBS", "2", "N_JOBS must be a positive whole number"),
    ("DATA_PATH", 5, "DATA_PATH must be None or a file path"),
    ("OUTPUT_DIR", "", "OUTPUT_DIR must be None or a folder path"),
    ("DASK_SCHEDULER", 8786, "DASK_SCHEDULER must be None or a scheduler address"),
])
def test_bad_notebook_parameters_are_named(name, value, message):
    with pytest.raises(DataError, match=f"Bad notebook parameter.*{message}"):
        helpers.check_parameters(**{name: value})


def test_good_notebook_parameters_pass():
    helpers.check_parameters(DATA_PATH=None, OUTPUT_DIR=None, SEED=42, QUICK=False, N_JOBS=2,
                             DASK_SCHEDULER=None)
    helpers.check_parameters(DATA_PATH=helpers.SAMPLE_DATA, OUTPUT_DIR="build/x",
                             SEED=np.int64(7), QUICK=True, N_JOBS=1,
                             DASK_SCHEDULER="tcp://10.0.0.5:8786")
    with pytest.raises(TypeError, match="unknown parameter.*SPEED"):
        helpers.check_parameters(SPEED=1)
