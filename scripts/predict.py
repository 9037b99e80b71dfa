#!/usr/bin/env python3
"""Predict total streams for new songs with the series' saved models (make predict).

The command is `spotify-predict` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/predict.py.
This file keeps `python scripts/predict.py` working.
"""

from spotify_streams.commands.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
