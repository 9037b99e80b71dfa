"""Regenerate the generated blocks of README.md and docs/*.md from the committed reports.

Usage: python scripts/update_readme.py [--check]
  --check  exit 1 (and say which page and block) if a block is out of date, instead of
           rewriting it.
A block sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers in the page that
BLOCKS names for it, and is generated from a file in reports/. A block whose report or page
does not exist is skipped, and the run says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # however this file is loaded (tests load it by path)
from series_report import headline_table  # noqa: E402  (the report's table of the test set)

README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- ([\w-]+):start -->$", re.M)  # a line of its own


def results_block(results: dict) -> str:
    """The test-set table of 06_results.json (models × feature sets, as in the report and the
    console summary), what it measures, and the quality-bar sentence."""
    columns, rows = headline_table(results["headline"])
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|--:" * (len(columns) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    tuned = ", ".join(f"{k} {v}" for k, v in results.get("tuned", {}).items())
    lines += ["", f"Test R² on log10(streams) [95 % bootstrap interval] of the {results['n_test']} "
              f"held-out songs, by artists never seen in training ({results['n_train']} songs "
              "for training and cross-validation); —: not run on that feature set. "
              + (f"Tuned MLP: notebook 05's grid ({tuned}). " if tuned else "")
              + "hgb / rf tuned: notebook 05's searches per feature set; hgb: scikit-learn's "
              "defaults. Typical error: 10^(median |log10 error|), the factor within which half "
              "of the songs are predicted."]
    if results.get("paired"):
        lines += ["", quality_bar(results)]
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


def runtime_block(bench: dict) -> str:
    """One sentence for the README: how long the whole series took in the benchmark."""
    seconds = bench["figures"].get("series_s")
    if seconds is None:
        return "The whole series has not been timed yet (`make bench`)."
    return (f"On the benchmark's machine ({bench['machine']}) the whole series took "
            f"{seconds:.0f} s, about {seconds / 60:.0f} minutes, on the real file "
            f"({bench['date']}).")


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


# name: (the page it lives in, the report it is generated from, relative to reports/, and
# the function that renders it)
BLOCKS = {
    "results": ("README.md", "metrics/06_results.json", results_block),
    "runtime": ("README.md", "benchmark.json", runtime_block),
    "performance": ("docs/performance.md", "benchmark.json", performance_block),
    "contract": ("docs/reproducibility.md", "drift.json", contract_block),
}


def blocks() -> dict:
    """The generated text of every block whose report and page exist."""
    out = {}
    for name, (page, source, renderer) in BLOCKS.items():
        report = ROOT / "reports" / source
        if report.is_file() and (ROOT / page).is_file():
            out[name] = renderer(json.loads(report.read_text(encoding="utf-8")))
    return out


def render(text: str, generated: dict, page: str = "README.md") -> str:
    """A page's text with each of its blocks replaced by its generated content."""
    for name, body in generated.items():
        if BLOCKS[name][0] != page:
            continue
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page} has no <!-- {name}:start --> ... <!-- {name}:end --> "
                             "markers; put them where the block belongs, or change its page "
                             "in scripts/update_readme.py's BLOCKS")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    for name in MARKER.findall(text):  # a block no one generates, or left behind
        if name not in BLOCKS:
            raise SystemExit(f"{page} has the markers of a block {name!r} that BLOCKS in "
                             "scripts/update_readme.py does not know: add it there or remove "
                             "the markers")
        if BLOCKS[name][0] != page:
            raise SystemExit(f"{page} has the markers of block {name!r}, which is generated "
                             f"into {BLOCKS[name][0]}: remove them from {page}")
    return text


def pages() -> list[Path]:
    """The pages that can hold blocks: README.md and docs/*.md."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def main(argv=None) -> int:
    """Rewrite the pages' blocks, or with --check report whether they are current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    args = parser.parse_args(argv)
    generated = blocks()
    for name in BLOCKS.keys() - generated.keys():
        page, source, _ = BLOCKS[name]
        missing = page if not (ROOT / page).is_file() else f"reports/{source}"
        print(f"block {name} skipped: {missing} does not exist")
    stale = []
    for path in pages():
        page = path.relative_to(ROOT).as_posix()
        current = path.read_text(encoding="utf-8")
        updated = render(current, generated, page)
        if updated == current:
            continue
        stale.append(page)
        if not args.check:
            path.write_text(updated, encoding="utf-8")
            print(f"{page} updated")
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(stale)}: run `make readme` "
              "(python scripts/update_readme.py) and commit")
        return 1
    print("generated blocks up to date" if args.check or not stale else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
