#!/usr/bin/env python3
"""Run the whole notebook series and build the HTML report (make run, make quick).

The command is `spotify-run` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/run_series.py.
This file keeps `python scripts/run_series.py` working.
"""

from spotify_streams.commands.run_series import main

if __name__ == "__main__":
    raise SystemExit(main())
