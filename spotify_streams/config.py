"""Run settings and paths: where a run of the series reads its data and writes its outputs,
the real file's sha256, and the notebooks' parameters."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from spotify_streams.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]  # the repository (an editable install)
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
    ParameterError names each wrong one."""
    unknown = [name for name in parameters if name not in PARAMETER_RULES]
    if unknown:
        raise TypeError(f"check_parameters: unknown parameter(s) {', '.join(unknown)}")
    wrong = [f"{name} must be {PARAMETER_RULES[name][1]}, not {value!r} ({type(value).__name__})"
             for name, value in parameters.items() if not PARAMETER_RULES[name][0](value)]
    if wrong:
        raise ParameterError("Bad notebook parameter(s): " + "; ".join(wrong) + ". With papermill: "
                        "-p QUICK True -p SEED 42 (run_series.py: --quick, --seed 42).")


def data_banner(run: Run) -> str:
    """A one-line (or empty) warning about the data a notebook runs on."""
    if run.is_synthetic:
        return ("⚠ SYNTHETIC SAMPLE: every number below comes from a generated sample, not from "
                "the Kaggle file, and says nothing about real songs. " + DOWNLOAD_HINT)
    if not run.is_real:
        return f"Note: running on {run.data_path.name}, not the original Kaggle file."
    return ""
