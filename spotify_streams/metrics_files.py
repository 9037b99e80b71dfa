"""The notebooks' metrics files (reports/metrics/*.json): written and read back."""

from __future__ import annotations

import json
from pathlib import Path

from spotify_streams.config import REPORTS_DIR, Run
from spotify_streams.errors import MissingStepError
from spotify_streams.files import replacing


def save_metrics(run: Run, notebook: str, tables: dict, **extra) -> Path:
    """Write a notebook's metrics (tables rounded to 6 decimals) as JSON."""
    payload = {"notebook": notebook, "data": run.data_path.name, "real_data": run.is_real,
               "synthetic": run.is_synthetic, **extra,
               **{name: json.loads(table.round(6).to_json(orient="records"))
                  for name, table in tables.items()}}
    with replacing(run.metrics_dir / f"{notebook}.json") as partial:
        partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    return run.metrics_dir / f"{notebook}.json"


def load_metrics(run: Run, notebook: str) -> dict:
    """An earlier notebook's metrics; on the real file the committed ones if this run has none."""
    path = run.metrics_dir / f"{notebook}.json"
    committed = REPORTS_DIR / "metrics" / path.name
    if not path.is_file() and run.is_real and committed.is_file():
        print(f"Metrics of {notebook} not found at {path}: using the committed {committed}.")
        path = committed
    if not path.is_file():
        raise MissingStepError(f"Metrics of {notebook} not found at {path}. "
                               "Run that notebook first.")
    return json.loads(path.read_text(encoding="utf-8"))
