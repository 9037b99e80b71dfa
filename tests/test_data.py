"""Reading and cleaning (every quirk and refusal), runs, parameters, errors, runtime settings."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from spotify_streams import config
from spotify_streams.commands.synthetic_sample import make_synthetic_sample
from spotify_streams.config import BUILD_DIR, REPORTS_DIR, SAMPLE_DATA, resolve_run
from spotify_streams.dataset import clean, load_raw, load_songs
from spotify_streams.errors import DataError, MissingStepError, ParameterError
from spotify_streams.evaluation import check_data
from spotify_streams.metrics_files import load_metrics, save_metrics
from spotify_streams.runtime import RUNTIME_ENVIRONMENT, configure_runtime
from spotify_streams.schema import REQUIRED_COLUMNS, RESERVED_COLUMNS

HEADER = ",".join(REQUIRED_COLUMNS)
KEPT_ROW = 3  # a sample row clean() keeps


def row(name="Song", artist="Artist", streams="123456789", year="2022", key="A", shazam="3",
        deezer="12", mode="Major", playlists="100"):
    """One CSV line in the original column order."""
    values = [name, artist, "1", year, "5", "20", playlists, "4", streams, "30", "2", deezer, "1",
              shazam, "120", key, mode, "50", "50", "50", "10", "0", "10", "5"]
    return ",".join(f'"{v}"' if "," in v else v for v in values)


def write(tmp_path, lines, name="data.csv", encoding="utf-8", newline="\n", bom=False):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" * bom + (newline.join(lines) + newline).encode(encoding))
    return path


def good_lines(n=5):
    return [HEADER] + [row(name=f"Song {i}", streams=str(10_000_000 * (i + 1))) for i in range(n)]


def steps(result):
    return result.steps_table().set_index("step")["rows"]


@pytest.mark.parametrize("variant", ["bom", "crlf", "cp1252", "reordered", "trailing"])
def test_resaved_files_give_the_same_frame_and_cp1252_is_logged(tmp_path, variant):
    """In CP1252 bytes 'é’' looks like UTF-8, the other accents stand alone: read as CP1252."""
    lines = good_lines() + [row(name="Café’s Song"), row(name="Canción"), row(artist="Beyoncé")]
    reference = load_raw(write(tmp_path, lines, "reference.csv"))
    path = write(tmp_path, [line + ",," * (variant == "trailing") for line in lines],
                 encoding="cp1252" if variant == "cp1252" else "utf-8",
                 newline="\r\n" if variant == "crlf" else "\n", bom=variant == "bom")
    if variant == "reordered":
        reference.iloc[:, ::-1].to_csv(path, index=False)
    frame = load_raw(path)
    pd.testing.assert_frame_equal(frame, reference)
    assert [*frame["track_name"][5:7], frame["artist(s)_name"][7]] == [
        "Café’s Song", "Canción", "Beyoncé"]
    log = clean(frame).steps_table().set_index("step")
    assert log.loc["encoding damage in names", "rows"] == 0
    if variant == "cp1252":  # otherwise not logged: test_damaged_utf8_stays_utf8...
        assert log.loc["file encoding", "rows"] == 3
        assert "CP1252" in log.loc["file encoding", "action"]


def test_damaged_utf8_stays_utf8_and_each_damage_is_marked_once(tmp_path):
    """As in the original: a cut sequence, a stray byte, runs of U+FFFD; the file untouched."""
    body = "\r\n".join(good_lines() + [row(name="Canción"), ""]).encode()
    for old, new in [(b"Song 0", b"Beyonc\xef\xbf"), (b"Song 1", b"Caf\xe9"),
                     (b"Song 2", b"L\xef\xbf\xbd\xef\xbf\xbd\xef\xbf")]:
        body = body.replace(old, new)
    path = tmp_path / "damaged.csv"
    path.write_bytes(body)
    raw = load_raw(path)
    result = clean(raw)
    assert raw["track_name"].tolist()[:3] == ["Beyonc\ufffd", "Caf\ufffd", "L\ufffd\ufffd\ufffd"]
    assert result.data["track_name"].tolist()[2] == "L\ufffd"
    assert steps(result)["encoding damage in names"] == 3 and "file encoding" not in steps(result)
    assert path.read_bytes() == body


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found.*kaggle"), (lambda p: p.mkdir(), "is a folder, not a CSV file"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"\xef\xbb\xbf  \r\n"), "empty"),
    (lambda p: p.write_bytes((HEADER + "\n").encode()), "no data rows"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary"), "not a CSV"),
    (lambda p: p.write_bytes(b"a,b,c\n1,2,3\n"), "does not look like"),
    (lambda p: os.replace(shutil.make_archive(p, "zip", SAMPLE_DATA.parent), p), "ZIP.*Unzip it"),
    *[(lambda p, e=e: p.write_bytes("\n".join(good_lines()).encode(e)), "UTF-16.*CSV UTF-8")
      for e in ("utf-16", "utf-16-le", "utf-16-be")]])
def test_unusable_files_are_refused_with_the_fix(tmp_path, make, message):
    path = tmp_path / "spotify-2023.csv"
    make(path)
    with pytest.raises(DataError, match=message) as error:
        load_raw(path)
    assert "UTF-16" not in message or "unzip" not in str(error.value).lower()


def test_columns_extra_reserved_missing_and_the_target_for_rows_to_predict(tmp_path):
    frame, path = load_raw(write(tmp_path, good_lines())), tmp_path / "changed.csv"
    frame.assign(extra="x")[["extra", *REQUIRED_COLUMNS]].to_csv(path, index=False)
    assert load_raw(path).columns.tolist() == [*REQUIRED_COLUMNS, "extra"]
    refused = {f"named {c}, which cleaning adds": frame.assign(**{c: 7}) for c in RESERVED_COLUMNS}
    refused["lacks required column.*bpm, mode"] = frame.drop(columns=["bpm", "mode"])
    refused["lacks required column.*streams"] = frame.drop(columns="streams")
    for message, changed in refused.items():
        changed.to_csv(path, index=False)
        with pytest.raises(DataError, match=message):
            load_raw(path)
    frame.drop(columns=["streams", "bpm"]).to_csv(path, index=False)  # rows to predict, no bpm
    with pytest.raises(DataError, match=r"lacks required column\(s\): bpm\. "):  # not streams
        load_raw(path, target=False)  # reading without streams: test_models.py::test_raw_rows...


@pytest.mark.parametrize("lines, message", [
    (good_lines()[1:] + [row(name="X", playlists="lots")], r"'in_spotify_playlists'.*'lots'"),
    (good_lines()[1:] + [row(name="X", playlists="Infinity")], r"playlists'.*'Infinity'"),
    (good_lines()[1:] + [row(name="X", key="H")], r"'key'.*'H'.*allowed"),
    (good_lines()[1:] + [row(name="X", mode="minor")], r"'mode'.*'minor'.*allowed"),
    ([row(name=f"S{i}", streams="") for i in range(3)], "usable 'streams'"),
    ([row(name=f"S{i}", streams="n/a") for i in range(3)], "'streams' holds 3 value.*counts"),
    (good_lines()[1:], "Only 5 usable songs after cleaning; the series needs at least 50"),
    ([row(name=f"S{i}") for i in range(60)], "60 songs by 1 artists: too few artists to hold")])
def test_check_data_refuses_bad_values_no_usable_target_or_too_few_songs(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        check_data(write(tmp_path, [HEADER, *lines]))


def test_each_quirk_is_dropped_or_filled_and_counted(tmp_path):
    """Also the two decisions on streams that notebook 06 varies; the input frame unchanged."""
    raw = load_raw(write(tmp_path, good_lines() + [
        row(name="Bad", streams="BPM110KeyAModeMajor"), row(name="NoMode", mode=""),
        row(name="NoShazam", shazam=""), row(name="NoKey", key=""),
        row(name="Twin", streams="500000000", playlists="10"),
        row(name="twin ", streams="700000000", playlists="5"), row(name="Tiny", streams="2762"),
        row(name="Old", year="1930"), row(name="Classic", year="1942"),
        row(name="Sep", deezer="1,021", shazam="2,000")]))
    copy = raw.copy()
    result = clean(raw)
    pd.testing.assert_frame_equal(raw, copy)
    data, counts = result.data.set_index("track_name"), steps(result)
    assert {"Bad", "NoMode", "Tiny", "Old", "Twin"} & set(data.index) == set()
    assert data.loc["twin", "streams"] == 700_000_000  # the copy with more streams
    assert data.loc["NoKey", "key"] == "C" and np.isnan(data.loc["NoShazam", "in_shazam_charts"])
    assert data.loc["Sep", ["in_deezer_playlists", "in_shazam_charts"]].tolist() == [1021, 2000]
    assert data.loc["Song 0", "in_deezer_playlists"] == 12 and counts["thousands separators"] == 2
    assert counts[["corrupted streams value", "missing numbers or mode", "missing in_shazam_charts",
                   "duplicate track/artist pairs", "streams below 100,000",
                   "release year before 1940"]].tolist() == [1] * 6
    assert result.data["streams"].dtype == np.int64 and data.loc["Classic", "released_year"] == 1942
    assert isinstance(data["key"].dtype, pd.CategoricalDtype)
    assert data["mode"].cat.categories.tolist() == ["Major", "Minor"]
    assert data.loc["Song 0", "release_date"] == pd.Timestamp("2022-05-20")
    assert data["days_since_release"].min() == 0
    first = clean(raw, keep_repeat="first listed").data
    assert first.loc[first["track_name"].str.casefold() == "twin", "streams"].tolist() == [5e8]
    assert "Tiny" in clean(raw, min_streams=0).data["track_name"].tolist()
    with pytest.raises(ValueError, match="keep_repeat='last'"):
        clean(raw, keep_repeat="last")
    lines = good_lines() + [row(name="NoKey", key=""), row(name="HasC", key="C")]
    with_c = clean(load_raw(write(tmp_path, lines))).data.set_index("track_name")
    assert with_c.loc["NoKey", "key"] == "unknown"  # in a file that has C, a blank is not C


def test_a_run_rebuilds_cleaned_data_once_and_reads_or_refuses_metrics(tmp_path, songs, capsys):
    """A notebook opened alone (no 02 before it) rebuilds the cleaned table as 02 does. Metrics
    keep 6 decimals; those of a notebook not run are a MissingStepError, or the committed ones."""
    run = resolve_run(SAMPLE_DATA, tmp_path)
    load_songs(run)
    assert "Cleaned data not found" in capsys.readouterr().out and run.processed_path.is_file()
    loaded = load_songs(run)
    assert capsys.readouterr().out == ""  # present: read, not rebuilt
    pd.testing.assert_frame_equal(loaded, songs, check_dtype=False)  # with the derived inputs
    assert loaded["key"].dtype == songs["key"].dtype
    assert save_metrics(run, "99_test", {"cv": pd.DataFrame({"m": ["a"], "r2": [0.123456789]})},
                        seed=1) == tmp_path / "metrics" / "99_test.json"
    assert load_metrics(run, "99_test") == {"notebook": "99_test", "data": SAMPLE_DATA.name,
                                           "real_data": False, "synthetic": True, "seed": 1,
                                           "cv": [{"m": "a", "r2": 0.123457}]}
    with pytest.raises(MissingStepError, match="Run that notebook first") as error:
        load_metrics(run, "05_grid")
    assert isinstance(error.value, FileNotFoundError) and not isinstance(error.value, DataError)
    real = config.Run(config.RAW_DATA, tmp_path, tmp_path / "metrics", True, False)
    assert load_metrics(real, "05_grid")["tuned"]  # the committed reports/metrics/05_grid.json
    assert "using the committed" in capsys.readouterr().out


def test_the_committed_sample_is_what_the_generator_makes_with_every_quirk():
    raw_bytes = SAMPLE_DATA.read_bytes()
    assert raw_bytes == make_synthetic_sample() and b"\r\n" in raw_bytes  # CRLF line ends
    with pytest.raises(UnicodeDecodeError):  # bytes that are not UTF-8, as in the original
        raw_bytes.decode("utf-8")
    found = steps(clean(load_raw(SAMPLE_DATA)))
    assert found["duplicate track/artist pairs"] == 4
    assert (found[["encoding damage in names", "thousands separators", "corrupted streams value",
                   "missing key", "missing in_shazam_charts", "streams below 100,000",
                   "release year before 1940"]] >= 1).all()
    assert not {"values out of range", "file encoding"} & set(found.index)  # logged only if used
    assert not found.index.str.startswith("release date after").any()


def test_resolve_run_output_folders_and_a_quick_run_never_writes_reports(tmp_path, monkeypatch):
    """A quick run on the real file once rewrote reports/; SERIES_REPORTS_DIR redirects it."""
    monkeypatch.setattr(config, "RAW_DATA", tmp_path / "absent.csv")
    run = resolve_run()
    assert run.is_synthetic and not run.is_real and "SYNTHETIC" in config.data_banner(run)
    assert run.metrics_dir == BUILD_DIR / "synthetic" / "metrics"
    run = resolve_run(SAMPLE_DATA, tmp_path / "out")  # metrics: test_a_run_rebuilds_cleaned_data...
    assert all(p.is_relative_to(tmp_path / "out") for p in (run.processed_path, run.models_dir))
    run = resolve_run(write(tmp_path, good_lines(), "mine.csv"))
    assert run.output_dir == BUILD_DIR / "mine" and "not the original" in config.data_banner(run)
    real = write(tmp_path, good_lines(), "spotify-2023.csv")
    monkeypatch.setattr(config, "REAL_SHA256", config.file_sha256(real))
    monkeypatch.delenv("SERIES_REPORTS_DIR", raising=False)  # set by conftest.py
    full, quick = resolve_run(real), resolve_run(real, quick=True)
    assert full.is_real and full.metrics_dir == REPORTS_DIR / "metrics"
    assert quick.is_real and quick.output_dir == BUILD_DIR / "real-quick"
    assert not any(p.is_relative_to(REPORTS_DIR) for p in (quick.metrics_dir, quick.figures_dir))
    monkeypatch.setenv("SERIES_REPORTS_DIR", str(tmp_path / "copy"))
    assert resolve_run(real).figures_dir == tmp_path / "copy" / "figures"


def test_future_release_dates_are_dropped_and_do_not_move_the_reference_date():
    raw = load_raw(SAMPLE_DATA)
    sample = clean(raw)
    typos = sample.data["raw_row"].iloc[:10].tolist()  # rows clean() otherwise keeps
    raw.loc[typos, "released_year"] = "2030"
    result = clean(raw, as_of="2026-11-26")
    assert result.reference_date == sample.reference_date  # the latest plausible date
    step = "release date after 2026-11-26"
    assert steps(result)[step] == 10
    assert sorted(result.dropped.loc[result.dropped["reason"] == step, "raw_row"]) == typos
    kept = sample.data[~sample.data["raw_row"].isin(typos)].reset_index(drop=True)
    pd.testing.assert_series_equal(result.data["days_since_release"], kept["days_since_release"])
    raw = load_raw(SAMPLE_DATA)
    raw.loc[raw.index[0], "released_year"] = str(pd.Timestamp.today().year + 1)
    assert clean(raw).steps_table()["step"].str.startswith("release date after ").sum() == 1


@pytest.mark.parametrize("column, value", [  # a -1 once reached log1p in 03 ('infinity')
    ("in_spotify_playlists", "-1"), ("in_deezer_charts", "-2"), ("in_shazam_charts", "-3"),
    ("danceability_%", "1000000"), ("energy_%", "101"), ("bpm", "1000000000"), ("bpm", "0"),
    ("artist_count", "0"), ("in_apple_charts", "1.5")])
def test_out_of_range_values_are_dropped_and_logged(column, value):
    raw = load_raw(SAMPLE_DATA)
    raw.loc[KEPT_ROW, column] = value
    result = clean(raw)
    assert KEPT_ROW not in result.data["raw_row"].tolist()
    log = result.steps_table().set_index("step").loc["values out of range"]
    assert log["rows"] == 1 and column in log["action"]
    assert result.dropped.set_index("raw_row").loc[KEPT_ROW, "reason"] == "values out of range"


@pytest.mark.parametrize("name, value, message", [  # message: after "NAME must be "
    ("QUICK", "yes", "True or False, not 'yes' \\(str\\)"), ("QUICK", 1, "True or False"),
    ("SEED", "42", "a whole number"), ("SEED", -1, "a whole number fr"),
    ("SEED", 1.5, "a whole number"), ("SEED", True, "a whole number"),
    ("N_JOBS", 0, "a positive whole number"), ("N_JOBS", "2", "a positive whole number"),
    ("DATA_PATH", 5, "None or a file path"), ("OUTPUT_DIR", "", "None or a folder path"),
    ("DASK_SCHEDULER", 8786, "None or a scheduler address")])
def test_a_bad_notebook_parameter_is_a_parameter_error_not_a_data_error(name, value, message):
    match = f"Bad notebook parameter.*{name} must be {message}"
    with pytest.raises(ParameterError, match=match) as error:
        config.check_parameters(**{name: value})
    assert not isinstance(error.value, DataError) and issubclass(DataError, ValueError)


def test_good_notebook_parameters_pass():
    """The defaults (None, 42, False, 2): test_every_notebook_checks_all_its_parameters[05_grid]."""
    config.check_parameters(DATA_PATH=SAMPLE_DATA, OUTPUT_DIR="build/x", SEED=np.int64(7),
                            QUICK=True, N_JOBS=1, DASK_SCHEDULER="tcp://10.0.0.5:8786")
    with pytest.raises(TypeError, match="unknown parameter.*SPEED"):
        config.check_parameters(SPEED=1)


def test_only_configure_runtime_sets_the_runtime_variables_and_keeps_the_callers():
    """Importing helpers or any module of the package sets none."""
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENVIRONMENT}
    code = ("import os, pkgutil, helpers, spotify_streams as s; [__import__(m.name) for m in "
            "pkgutil.walk_packages(s.__path__, s.__name__ + '.')]; "
            f"print(sorted(set(os.environ) & {set(RUNTIME_ENVIRONMENT)!r}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr[-2000:]
    environ = {"ONEDNN_MAX_CPU_ISA": "SSE41"}  # e.g. an emulated CPU
    assert configure_runtime(environ) == environ == {
        "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0"}
