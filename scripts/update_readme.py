"""Regenerate the README's generated blocks (results, performance) from the committed reports.

Usage: python scripts/update_readme.py [--check]
  --check  exit 1 (and say which block) if README.md is out of date, instead of rewriting it.
Blocks sit between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "reports" / "metrics" / "06_results.json"
BENCHMARK = ROOT / "reports" / "benchmark.json"
MODELS = ["mean", "linear", "hgb", "seed MLP", "tuned MLP", "ensemble"]
SETS = ["audio", "pre-release", "full"]


def results_block(results: dict) -> str:
    """Markdown table: CV R² (mean ± std) and test R² per model and feature set."""
    cv = {(r["model"], r["feature_set"]): r for r in results["cv"]}
    test = {(r["model"], r["feature_set"]): r for r in results["test"]}
    head = "| model | " + " | ".join(f"{s}: CV R² | {s}: test R²" for s in SETS)
    head += " | full: typical error (test) |"
    lines = [head, "|---" * (2 * len(SETS) + 2) + "|"]
    for m in MODELS:
        cells = []
        for s in SETS:
            c, t = cv[m, s], test[m, s]
            cells += [f"{c['r2_mean']:.3f} ± {c['r2_std']:.3f}", f"{t['r2']:.3f}"]
        cells.append(f"× {test[m, 'full']['median_factor']:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    tuned = ", ".join(f"{k} {v}" for k, v in results["tuned"].items())
    mlp, lin, hgb = (cv[m, "full"]["r2_mean"] for m in ("tuned MLP", "linear", "hgb"))
    lines += ["", f"R² on log10(streams); CV on {results['n_train']} training songs "
              f"(grouped 5-fold × 3 repeats), test on {results['n_test']} held-out songs. "
              f"Tuned MLP: {tuned}. Typical error: 10^(median |log10 error|).",
              "",
              "Quality bar (full set, CV R²): the tuned MLP "
              f"{'beats' if mlp > lin else 'does not beat'} linear regression "
              f"({mlp:.3f} vs {lin:.3f}) and "
              f"{'matches or beats' if mlp >= hgb else 'falls short of'} gradient boosting "
              f"({hgb:.3f})."]
    return "\n".join(lines)


def performance_block(bench: dict) -> str:
    """Markdown list of the benchmark figures."""
    f = {k: (float("nan") if v is None else v) for k, v in bench["figures"].items()}
    return "\n".join([
        f"Measured by `make bench` on {bench['machine']} ({bench['date']}):",
        "",
        "| what | figure | goal |",
        "|---|---|---|",
        f"| one 100-epoch fit, plain `model.fit` | {f['naive_fit_s']:.2f} s | |",
        f"| one 100-epoch fit, project path (single model) | {f['fast_fit_s']:.2f} s | |",
        f"| per fit inside the grid (160 fits batched) | {f['grid_per_fit_s']:.3f} s | |",
        f"| speed-up per fit: single / batched | × {f['speedup_single']:.1f} / "
        f"× {f['speedup_grid']:.0f} | |",
        f"| full seed grid, 32 configs × 5 folds | {f['grid_s']:.1f} s | ≤ 60 s |",
        f"| whole series under papermill | {f['series_s']:.0f} s | ≤ 180 s |",
        f"| peak memory of the series (largest kernel) | {f['peak_memory_mb']:.0f} MB "
        "| ≤ 2048 MB |",
    ])


def blocks() -> dict:
    """The generated text of every block whose source file exists."""
    out = {}
    if RESULTS.is_file():
        out["results"] = results_block(json.loads(RESULTS.read_text(encoding="utf-8")))
    if BENCHMARK.is_file():
        out["performance"] = performance_block(json.loads(BENCHMARK.read_text(encoding="utf-8")))
    return out


def render(text: str, generated: dict) -> str:
    """README text with each marked block replaced by its generated content."""
    for name, body in generated.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start/end --> markers")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    """Rewrite README.md, or with --check report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    updated = render(current, blocks())
    if args.check:
        if updated != current:
            print("README.md is stale: run `make readme` (python scripts/update_readme.py)")
            return 1
        print("README.md is up to date")
        return 0
    README.write_text(updated, encoding="utf-8")
    print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
