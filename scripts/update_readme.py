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
DRIFT = ROOT / "reports" / "drift.json"  # scripts/measure_drift.py
CONTRACT_MARKER = "<!-- contract:start -->"
MODELS = ["mean", "linear", "hgb", "hgb tuned", "rf tuned", "seed MLP", "tuned MLP", "ensemble"]
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
            if (m, s) not in test:  # the tuned MLP and the ensemble: full set only
                cells += ["—", "—"]
                continue
            c, t = cv[m, s], test[m, s]
            cells += [f"{c['r2_mean']:.3f} ± {c['r2_std']:.3f}",
                      f"{t['r2']:.3f} [{t['r2_low']:.2f}, {t['r2_high']:.2f}]"]
        cells.append(f"× {test[m, 'full']['median_factor']:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    tuned = ", ".join(f"{k} {v}" for k, v in results["tuned"].items())
    lines += ["", f"R² on log10(streams); CV on {results['n_train']} training songs "
              f"(5-fold grouped by first artist × 3 repeats, mean ± sd over folds), test on "
              f"{results['n_test']} held-out songs by artists never seen in training [95 % "
              "bootstrap interval]. "
              f"Tuned MLP (notebook 05's grid, full set only; — : not run): {tuned}. "
              "hgb / rf tuned: notebook 05's searches per feature set; hgb: scikit-learn's "
              "defaults. Typical error: 10^(median |log10 error|).",
              "", quality_bar(results)]
    return "\n".join(lines)


def quality_bar(results: dict) -> str:
    """The quality-bar sentence, from 06's paired per-fold differences (full feature set)."""
    paired = {r["comparison"]: r for r in results["paired"] if r["feature_set"] == "full"}

    def judged(name, beaten, not_beaten):
        row = paired[name]
        d, se = row["r2_difference"], row["r2_difference_se"]
        verdict = (beaten if d > 2 * se else not_beaten if d < -2 * se
                   else "is within noise of")
        return f"{verdict} {name.split(' − ')[1]} ({d:+.3f} ± {se:.3f} R², {d / se:+.1f} SE)"

    return ("Quality bar (full set; paired differences over the CV folds ± standard error, "
            "beyond 2 SE counts): the tuned MLP "
            + judged("tuned MLP − linear", "beats", "falls short of") + " and "
            + judged("tuned MLP − hgb tuned", "beats", "falls short of") + "; the ensemble "
            + judged("ensemble − hgb tuned", "beats", "falls short of") + ".")


def performance_block(bench: dict) -> str:
    """Markdown table of the benchmark figures ("not measured" where a figure is missing)."""
    def show(key, template):
        value = bench["figures"].get(key)
        return "not measured" if value is None else template.format(value)

    scaling = ", ".join(f"{int(rows):,} rows {seconds:.0f} s"
                        for rows, seconds in bench.get("scaling_quick_series_s", {}).items())
    lines = [
        f"Measured by `make bench` on {bench['machine']} ({bench['date']}):",
        "",
        "| what | figure | goal |",
        "|---|---|---|",
        f"| one 100-epoch fit, the seed's plain `model.fit` | {show('naive_fit_s', '{:.2f} s')} "
        "| |",
        "| one 100-epoch fit, the project's Keras path (`make_mlp`) | "
        f"{show('fast_fit_s', '{:.2f} s')} | |",
        f"| speed-up per fit | {show('speedup_single', '× {:.1f}')} | ≥ × 10 |",
        "| seed grid, 32 configs × 5 folds, `GridSearchCV` on 2 processes | "
        f"{show('grid_s', '{:.0f} s')} | ≤ 60 s |",
        "| the same grid the seed's way, one fit after another (estimate) | "
        f"{show('naive_grid_s', '{:.0f} s')} | |",
        f"| speed-up of the grid | {show('speedup_grid', '× {:.1f}')} | ≥ × 25 |",
        f"| whole series under papermill | {show('series_s', '{:.0f} s')} | ≤ 240 s |",
        "| peak memory of the series (largest kernel) | "
        f"{show('peak_memory_mb', '{:.0f} MB')} | ≤ 2048 MB |",
        "| two quick series at once, the slower as a multiple of one alone | "
        f"{show('contention_two_runs', '× {:.2f}')} | ≤ × 2.5 |",
        "| a quick series beside a busy loop, as a multiple of alone | "
        f"{show('contention_busy_loop', '× {:.2f}')} | ≤ × 2.5 |",
    ]
    if scaling:
        lines += ["", f"Quick-mode series on synthetic samples: {scaling}."]
    return "\n".join(lines)


def contract_block(drift: dict) -> str:
    """Markdown table of the reproducibility contract: per metric category the largest drift
    seen across emulated CPUs, the typical change from another seed, and the tolerance."""
    def show(value, relative=False):
        if value is None:
            return "–"
        return f"{value:.2%}" if relative else f"{value:.2g}"

    lines = ["| category | what it covers | max drift across emulated CPUs "
             "| other seed (typical) | tolerance |", "|---|---|---|---|---|"]
    for name, entry in drift["categories"].items():
        rel = entry.get("relative", False)
        covers = entry["covers"].replace("|", "\\|")
        lines.append(f"| {name} | {covers} | {show(entry['cpu_max'], rel)} | "
                     f"{show(entry['other_seed_median'], rel)} | "
                     f"{show(entry['tolerance'], rel)} |")
    image = drift["image"]
    lines.append(f"| figures (TF) | {image['what']} | {show(image['cpu_max'])} | "
                 f"{show(image['other_seed_median'])} | {show(image['tolerance'])} |")
    targets = ", ".join(label for label, run in drift["runs"].items()
                        if run.get("onednn_max_cpu_isa", "native") != "native")
    exact = drift["scikit_learn_exact"]
    seeded = any(run.get("seed", 42) != 42 for run in drift["runs"].values())
    lines += ["", f"Measured by `make drift` on {drift['host']} ({drift['date']}): the series "
              f"natively and with oneDNN's matrix kernels capped at older CPUs' instruction sets "
              f"({targets}, `ONEDNN_MAX_CPU_ISA`)"
              f"{', and once with another seed' if seeded else ' (no other-seed run this time)'}"
              f". Tolerance = max(floor, {drift['safety']} × CPU drift), rounded up to a "
              "1-2-5 step; relative for median_factor. scikit-learn results: "
              f"{exact['values_compared']} values compared across CPU targets, "
              f"{exact['values_differed']} differed (they are compared exactly)."]
    return "\n".join(lines)


def blocks() -> dict:
    """The generated text of every block whose source file exists."""
    out = {}
    if RESULTS.is_file():
        out["results"] = results_block(json.loads(RESULTS.read_text(encoding="utf-8")))
    if BENCHMARK.is_file():
        out["performance"] = performance_block(json.loads(BENCHMARK.read_text(encoding="utf-8")))
    if DRIFT.is_file() and CONTRACT_MARKER in README.read_text(encoding="utf-8"):
        out["contract"] = contract_block(json.loads(DRIFT.read_text(encoding="utf-8")))
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
