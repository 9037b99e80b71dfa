#!/usr/bin/env python3
"""Measure speed and memory; write reports/benchmark.json (make bench).

The command is `spotify-bench` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/benchmark.py.
This file keeps `python scripts/benchmark.py` working.
"""

from spotify_streams.commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
