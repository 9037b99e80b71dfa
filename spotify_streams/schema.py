"""The columns of the Kaggle file and the values a usable row may hold."""

from __future__ import annotations

import numpy as np

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


PLATFORM_COLUMNS = [
    "in_spotify_playlists", "in_spotify_charts", "in_apple_playlists", "in_apple_charts",
    "in_deezer_playlists", "in_deezer_charts", "in_shazam_charts",
]
