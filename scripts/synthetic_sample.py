#!/usr/bin/env python3
"""Write a synthetic CSV with the Kaggle file's schema (data/sample/).

The command is `spotify-sample` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/synthetic_sample.py.
This file keeps `python scripts/synthetic_sample.py` working.
"""

from spotify_streams.commands.synthetic_sample import main

if __name__ == "__main__":
    raise SystemExit(main())
