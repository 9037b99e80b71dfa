"""Predict total streams for new songs with the models the series saved (notebook 06).

    spotify-predict new.csv [--inputs pre-release|full] [--age-days N] [--interval 0.8]
                    [--model-dir DIR] [-o out.csv]      (also: python scripts/predict.py ...)

new.csv has the Kaggle file's columns (no `streams` needed; any order, UTF-8 or Latin-1, with
or without thousands separators). The output has one row per input row: the song's name
columns, `predicted` (total streams, a median: half of such songs stream more) and, with
--interval P (0.5, 0.8, 0.9 or 0.95), `lower` and `upper`: MAPIE's cross-conformal interval
at that level. --inputs pre-release (the forecaster) needs no playlist or chart counts.

Song age describes a reference class, not one song's path: every song in the data is a 2023
hit, so the models describe songs of a given age that are in a top list like this one (a
30-day-old song in it is an exceptional hit, a 20-year-old one an evergreen that survived).
--age-days 365 gives the typical total of songs that are a year old and in a top list like
this one, not the total your song will have after a year; it also works for songs not yet
released. Without -o the table goes to standard output.

The models are read with skops.io, which loads only the types the series saves (a file that
holds any other is refused); they still run the series' own code when they predict: use model
files made by this series (notebook 06, `make run` or a refresh).

Exit codes: 0 written; 2 bad input (a refused row, a file that is not the Kaggle schema, a
bad option value, no saved model, a model file holding types the series never saves): the
message names the problem, and no output file is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from spotify_streams.dataset import load_raw
from spotify_streams.errors import DataError, MissingStepError, UntrustedModelError
from spotify_streams.files import replacing
from spotify_streams.modeling.predict import (
    CONFIDENCE_LEVELS,
    check_interval,
    model_folder,
    predict_streams,
    prepare_rows,
)
from spotify_streams.parallel import BAR_FORMAT
from spotify_streams.runtime import configure_runtime
from spotify_streams.schema import NAME_COLUMNS

ROWS_PER_CHUNK = 2000  # a progress line per chunk on large files


def parse_args(argv):
    paragraphs = __doc__.split("\n\n")  # the title and what age means, as written
    parser = argparse.ArgumentParser(
        description="\n\n".join([paragraphs[0], *[p for p in paragraphs
                                                  if p.startswith("Song age")]]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Models are read with skops.io (trusted types only, no unpickling); use model\n"
               "files made by this series.")
    parser.add_argument("data", help="CSV of new songs, in the Kaggle file's schema")
    parser.add_argument("--inputs", choices=["full", "pre-release"], default="full",
                        help="full: the final model (needs playlist and chart counts); "
                             "pre-release: the forecaster (default: full)")
    parser.add_argument("--age-days", type=int, metavar="N",
                        help="predict as for songs N days old that are in a top list like this "
                             "one (a reference class, not your song's path: 365 is the typical "
                             "total of year-old songs in such a list, not your song's total "
                             "after a year); default: each song's age at the model's reference "
                             "date; later releases are refused")
    parser.add_argument("--interval", type=float, metavar="P",
                        help="add a P prediction interval (lower, upper), P one of "
                             f"{', '.join(map(str, CONFIDENCE_LEVELS))}: MAPIE's "
                             "cross-conformal interval over folds of whole artists")
    parser.add_argument("--model-dir", help="a saved model's folder (default: the series' own)")
    parser.add_argument("-o", "--output", help="CSV to write (default: standard output)")
    return parser.parse_args(argv)


def predict(args) -> pd.DataFrame:
    from tqdm import tqdm

    check_interval(args.interval)  # a bad level is named before any work
    rows = load_raw(args.data, target=False)
    chunks = [rows.iloc[i:i + ROWS_PER_CHUNK] for i in range(0, len(rows), ROWS_PER_CHUNK)]
    # every row is checked before any is predicted: one message names every refused row
    info = json.loads((model_folder(args.inputs, args.model_dir) / "model.json")
                      .read_text(encoding="utf-8"))
    prepare_rows(rows, info, args.age_days)
    parts = []
    for chunk in tqdm(chunks, "predicting", unit="chunks", file=sys.stderr,
                      disable=len(chunks) < 2, bar_format=BAR_FORMAT, ncols=100):
        out = predict_streams(chunk, args.model_dir, inputs=args.inputs,
                              age_days=args.age_days, interval=args.interval)
        parts.append(out.to_frame() if isinstance(out, pd.Series) else out)
    return pd.concat([rows[NAME_COLUMNS], pd.concat(parts)], axis=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_runtime()  # before a Keras model is loaded: no TensorFlow log lines, one thread
    try:
        table = predict(args)
    # DataError: refused rows or file; ValueError: a bad --age-days or --interval
    except (DataError, MissingStepError, UntrustedModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        table.to_csv(sys.stdout, index=False)
        return 0
    with replacing(Path(args.output)) as partial:  # no partial file on failure
        table.to_csv(partial, index=False)
    print(f"wrote {len(table)} predictions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
