"""Regenerate the generated blocks of README.md and docs/*.md from the committed reports.

Usage: spotify-readme [--check]   (also: python scripts/update_readme.py [--check])
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
from pathlib import Path

from spotify_streams.commands.benchmark import HIGHER_IS_BETTER  # the figures whose goal is a floor
from spotify_streams.commands.measure_drift import contract_block as drift_block
from spotify_streams.commands.series_report import headline_table  # the report's test-set table
from spotify_streams.config import REPORTS_DIR, ROOT

README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- ([\w-]+):start -->$", re.M)  # a line of its own


def results_block(results: dict) -> str:
    """The test-set table of 06_results.json (models × feature sets, as in the report and the
    console summary), what it measures, and the quality-bar sentence."""
    columns, rows = headline_table(results["headline"])
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|--:" * (len(columns) - 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    tuned = ", ".join(f"{k} {v}" for k, v in results.get("tuned", {}).items())
    lines += ["", f"Test R² on log10(streams) of the {results['n_test']} held-out songs by "
              f"{results.get('n_test_artists', 'their')} artists never seen in training "
              f"({results['n_train']} songs for training and cross-validation), with a 95 % "
              "interval from resampling those artists; —: not run on that feature set. "
              + (f"Tuned MLP: notebook 05's grid ({tuned}). " if tuned else "")
              + "hgb / rf tuned: notebook 05's searches per feature set; hgb: scikit-learn's "
              "defaults. Typical error: 10^(median |log10 error|), the factor within which half "
              "of the songs are predicted."]
    if results.get("paired"):
        lines += ["", quality_bar(results)]
    return "\n".join(lines)


def quality_bar(results: dict) -> str:
    """The quality-bar sentence and the final model, from 06's paired comparisons (full set;
    the corrected resampled t-test with Bonferroni's simultaneous intervals over the notebook's
    family, so a verdict and its interval always agree)."""
    paired = {r["comparison"]: r for r in results["paired"] if r["feature_set"] == "full"}

    def judged(name):
        row = paired[name]
        d = row["difference"]
        verdict = ("beats" if d > 0 else "falls short of") if row["verdict"] == "real" else \
            "is not told apart from"
        detectable = f"; detectable: {row['detectable']:.3f}" if "detectable" in row else ""
        return (f"{verdict} {name.split(' − ')[1]} ({d:+.3f} R² [{row['ci_low']:+.3f}, "
                f"{row['ci_high']:+.3f}]{detectable})")

    final = results.get("final_model")
    return ("Quality bar (full set; paired differences over the CV folds tuning did not see, with "
            "simultaneous intervals over notebook 06's family): the tuned MLP "
            + judged("tuned MLP − linear")
            + " and " + judged("tuned MLP − hgb tuned") + "; the ensemble "
            + judged("ensemble − hgb tuned") + "."
            + (f" The final model, the simplest within the noise of the best on the folds "
               f"tuning did not see: {final}; the pre-release forecaster: "
               f"{results['forecaster']}." if final else ""))


MODEL_ROLES = {"final": ("final_model", "full", "the final model"),
               "pre-release": ("forecaster", "pre-release", "the forecaster")}


def role_names(results: dict) -> dict:
    """'final' / 'pre-release' (the models' folders and inputs=) -> a readable name."""
    return {role: f"{label} ({results.get(key)}, {fs} set)"
            for role, (key, fs, label) in MODEL_ROLES.items()}


def markdown_table(rows: list[dict], names: dict) -> list[str]:
    """A list of records (a metrics table) as markdown, whatever its columns: the model column
    by name, coverage as a percentage, a width as a factor, other numbers as they are."""
    def cell(column, value):
        if column == "model":
            return names.get(value, str(value))
        if isinstance(value, float) and "coverage" in column:
            return f"{value:.0%}"
        if isinstance(value, float) and "width" in column:
            return f"×{value:.1f}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = list(rows[0])
    numeric = [isinstance(rows[0][c], int | float) and c != "model" for c in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("--:" if n else "---" for n in numeric) + "|"]
    return lines + ["| " + " | ".join(cell(c, r.get(c, "")) for c in columns) + " |"
                    for r in rows]


def monotone_sentence(results: dict) -> str:
    """Whether the forecaster is monotone in song age, as notebook 06 decided ('' if it did not
    say)."""
    if "forecaster_monotone" not in results:
        return ""
    return ("The forecaster is constrained to be monotone in song age (a modelling choice; the "
            "data cannot show how a song's streams grow): it never predicts fewer streams for "
            "an older song." if results["forecaster_monotone"] else
            "The forecaster is not constrained in song age (notebook 06's choice rule kept the "
            "unconstrained model): it can predict fewer streams for an older song.")


def forecast_block(results: dict) -> str:
    """The measured coverage and median width of the saved models' prediction intervals."""
    if not results.get("coverage"):
        return "The prediction intervals have not been measured yet (notebook 06)."
    lines = markdown_table(results["coverage"], role_names(results))
    headline = {(r["model"], r["feature_set"]): r for r in results["headline"]}
    forecaster = headline.get((results.get("forecaster"), "pre-release"))
    if forecaster:
        lines += ["", f"The forecaster's test R² is {forecaster['r2']:.3f} "
                  f"[{forecaster['r2_low']:.2f}, {forecaster['r2_high']:.2f}]; its typical "
                  f"error ×{forecaster['median_factor']:.2f}. " + monotone_sentence(results)]
        lines[-1] = lines[-1].rstrip()
    return "\n".join(lines)


def model_card_block(results: dict) -> str:
    """docs/model_card.md's facts: which model is the final model and which the forecaster,
    their test R² with its interval, CV score and typical error, and their intervals' measured
    coverage (overall and, when notebook 06 measured it, by age band)."""
    test = {(r["model"], r["feature_set"]): r for r in results["headline"]}
    cv = {(r["model"], r["feature_set"]): r for r in results.get("cv", [])}
    lines = ["| | the final model (`inputs=\"full\"`) | the forecaster "
             "(`inputs=\"pre-release\"`) |", "|---|---|---|"]
    chosen = [(results.get(key), fs) for key, fs, _ in MODEL_ROLES.values()]

    def row(label, show):
        return f"| {label} | " + " | ".join(show(m) for m in chosen) + " |"

    def test_r2(m):
        r = test.get(m)
        return f"{r['r2']:.3f} [{r['r2_low']:.2f}, {r['r2_high']:.2f}]" if r else "—"

    def cv_r2(m):
        r = cv.get(m)
        return f"{r['r2_mean']:.3f} ± {r['r2_std']:.3f}" if r else "—"

    lines += [row("model", lambda m: f"{m[0]} ({m[1]} feature set)"),
              row("test R² [95 % interval, resampling artists]", test_r2),
              row("cross-validated R² (mean ± sd over 15 folds, 5 of them used for tuning)",
                  cv_r2),
              row("typical error on the test set",
                  lambda m: f"×{test[m]['median_factor']:.2f}" if m in test else "—")]
    lines += ["", f"Test set: the {results['n_test']} held-out songs by "
              f"{results.get('n_test_artists', 'their')} artists never seen in training; R² on "
              "log10(streams). Typical error: 10^(median |log10 error|)."]
    if monotone_sentence(results):
        lines += ["", monotone_sentence(results)]
    names = role_names(results)
    if results.get("coverage"):
        lines += ["", "Prediction intervals, share of the test songs inside:", "",
                  *markdown_table(results["coverage"], names)]
    if results.get("coverage_by_age"):
        lines += ["", "The same by song age (songs of that age in the test set):", "",
                  *markdown_table(results["coverage_by_age"], names)]
    return "\n".join(lines)


PERFORMANCE_ROWS = [  # (what, figure, format); a figure's goal comes from the report
    ("one 100-epoch fit, the original report's plain `model.fit`", "naive_fit_s", "{:.2f} s"),
    ("one 100-epoch fit, the project's Keras path (`make_mlp`)", "fast_fit_s", "{:.2f} s"),
    ("speed-up per fit", "speedup_single", "× {:.1f}"),
    ("the project's set-up per fit beyond Keras's steps (a warm 1-epoch fit)", "fit_setup_ms",
     "{:.0f} ms"),
    ("Keras's own training step (64 wide, batch 32), one process alone", "step_ms", "{:.3f} ms"),
    ("the same step, two processes at once", "step_ms_two", "{:.3f} ms"),
    ("the original grid, 32 configs × 5 folds, `GridSearchCV` on 2 processes", "grid_s",
     "{:.0f} s"),
    ("of which the fits and their scoring (scikit-learn's own times ÷ 2)", "grid_busy_s",
     "{:.0f} s"),
    ("the grid's floor: its steps × Keras's step, two processes at once, ÷ 2", "grid_floor_s",
     "{:.0f} s"),
    ("the grid's floor from one process's step costs", "grid_floor_one_s", "{:.0f} s"),
    ("the grid as a multiple of its floor", "grid_over_floor", "× {:.2f}"),
    ("the grid as a multiple of the one-process floor", "grid_over_floor_one", "× {:.2f}"),
    ("the same grid the original way, one fit after another (estimate)", "naive_grid_s",
     "{:.0f} s"),
    ("speed-up of the grid", "speedup_grid", "× {:.1f}"),
    ("whole series under papermill", "series_s", "{:.0f} s"),
    ("peak memory of the series (largest process)", "peak_memory_mb", "{:.0f} MB"),
    ("two quick series at once, the slower as a multiple of one alone", "contention_two_runs",
     "× {:.2f}"),
    ("a quick series beside a busy loop, as a multiple of alone", "contention_busy_loop",
     "× {:.2f}"),
]


def performance_block(bench: dict) -> str:
    """Markdown table of the benchmark figures ("not measured" where a figure is missing), each
    beside the goal the report states for it."""
    def cell(template, value):
        return "not measured" if value is None else template.format(value)

    def goal(key, template):
        value = bench.get("goals", {}).get(key)
        if value is None:
            return ""
        plain = re.sub(r":\.\df", ":g", template)  # 300 s, × 1.25, × 10
        return f"{'≥' if key in HIGHER_IS_BETTER else '≤'} {plain.format(value)}"

    scaling = ", ".join(f"{int(rows):,} rows {seconds:.0f} s"
                        for rows, seconds in bench.get("scaling_quick_series_s", {}).items())
    lines = [f"Measured by `make bench` on {bench['machine']} ({bench['date']}):", "",
             "| what | figure | goal |", "|---|---|---|"]
    lines += [f"| {what} | {cell(template, bench['figures'].get(key))} | {goal(key, template)} |"
              for what, key, template in PERFORMANCE_ROWS]
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
    """The reproducibility contract's measured figures: measure_drift renders them (make drift
    writes the same block when it measures)."""
    return drift_block(drift)


# name: (the page it lives in, the report it is generated from, relative to reports/, and
# the function that renders it)
BLOCKS = {
    "results": ("README.md", "metrics/06_results.json", results_block),
    "forecast": ("README.md", "metrics/06_results.json", forecast_block),
    "model-card": ("docs/model_card.md", "metrics/06_results.json", model_card_block),
    "runtime": ("README.md", "benchmark.json", runtime_block),
    "performance": ("docs/performance.md", "benchmark.json", performance_block),
    "contract": ("docs/reproducibility.md", "drift.json", contract_block),
}


def blocks() -> dict:
    """The generated text of every block whose report and page exist."""
    out = {}
    for name, (page, source, renderer) in BLOCKS.items():
        report = REPORTS_DIR / source
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
                             "in spotify_streams/commands/update_readme.py's BLOCKS")
        text = pattern.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text)
    for name in MARKER.findall(text):  # a block no one generates, or left behind
        if name not in BLOCKS:
            raise SystemExit(f"{page} has the markers of a block {name!r} that BLOCKS in "
                             "spotify_streams/commands/update_readme.py does not know: add it "
                             "there or remove the markers")
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
              "(spotify-readme) and commit")
        return 1
    print("generated blocks up to date" if args.check or not stale else "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
