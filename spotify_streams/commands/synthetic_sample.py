"""A synthetic CSV with the schema and the quirks of the Kaggle file, and no real song in it.

    spotify-sample [--rows 400] [--seed 2023] [OUTPUT]   (or python scripts/synthetic_sample.py)

Without OUTPUT it rewrites the committed sample data/sample/synthetic-songs.csv (the tests
check that the committed file is exactly what this script makes). `make bench` uses larger
samples to measure how the series' time grows with rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spotify_streams.config import SAMPLE_DATA
from spotify_streams.schema import AUDIO_NUMERIC, KEYS, MODES


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



def main(argv=None) -> int:
    """Write a sample CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(SAMPLE_DATA))
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2023)
    args = parser.parse_args(argv)
    path = write_synthetic_sample(args.output, args.rows, args.seed)
    print(f"wrote {args.rows} rows (+4 repeated pairs) to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
