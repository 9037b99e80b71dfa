#!/usr/bin/env python3
"""Regenerate the generated blocks of README.md and docs/*.md (make readme).

The command is `spotify-readme` (installed by `pip install -e .`); its code and --help are in
spotify_streams/commands/update_readme.py.
This file keeps `python scripts/update_readme.py` working.
"""

from spotify_streams.commands.update_readme import main

if __name__ == "__main__":
    raise SystemExit(main())
