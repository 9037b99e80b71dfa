#!/usr/bin/env python3
"""Measure drift across emulated CPUs; write reports/drift.json (make drift).

The command is `spotify-drift` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/measure_drift.py.
This file keeps `python scripts/measure_drift.py` working.
"""

from spotify_streams.commands.measure_drift import main

if __name__ == "__main__":
    raise SystemExit(main())
