#!/usr/bin/env python3
"""Measure how much TensorFlow's results drift between CPUs; write reports/drift.json.

    python scripts/measure_drift.py [--reuse] [--labels native,AVX,SSE41,seed43]
                                    [--out build/drift] [--update-tolerances]

Maintainer tool (`make drift`). Runs the whole series (scripts/run_series.py) on the real data
file, sequentially, into build/drift/<label>/ (log: build/drift/<label>.log):

  native   this CPU as the project runs it (helpers.py caps oneDNN at AVX2)
  AVX      ONEDNN_MAX_CPU_ISA=AVX    (TF's matrix products as on an older CPU: no AVX2/FMA)
  SSE41    ONEDNN_MAX_CPU_ISA=SSE41  (as on a much older CPU)
  seed43   native, SEED 43: what a real change of the results looks like

TensorFlow's matrix products run on oneDNN's sgemm, which picks its kernel (and so its order of
summation) by the CPU's instruction set; capping it emulates another CPU on this one. (XLA's
--xla_cpu_max_isa changes nothing: the Keras path trains without XLA.)

Then compares every emulated run with native under the rules of tests/contract.py: per metric
category the largest deviation of a TF-derived value (relative for median_factor), the image
RMS of each TF figure, the same for the other-seed run, and whether everything scikit-learn
computed came out identical (counted, not assumed). The tolerances the test session uses are
derived from these measurements (tests/contract.py: max(floor, SAFETY x CPU drift), 1-2-5);
each must stay below the typical other-seed deviation, else a warning is printed.
--update-tolerances recomputes the derived fields of an existing reports/drift.json after a
change of SAFETY or the floors, without running anything. Exit codes: 0 ok, 1 a run failed or
a check failed, 2 bad usage or no real data file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import contract  # noqa: E402  (tests/contract.py: the rules and the tolerance derivation)

DATA = ROOT / "data" / "spotify-2023.csv"
RUNS = {  # label -> (ONEDNN_MAX_CPU_ISA or None for native, seed)
    "native": (None, 42),
    "AVX": ("AVX", 42),
    "SSE41": ("SSE41", 42),
    "seed43": (None, 43),
}
REFERENCE, OTHER_SEED = "native", "seed43"
EMULATED = [label for label, (isa, seed) in RUNS.items() if isa and seed == RUNS[REFERENCE][1]]
SANITIZERS = ROOT / "tests" / "nbval_sanitize.cfg"
RUN_INFO = "drift-run.json"  # written into each finished run folder


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true",
                        help="skip runs whose output folder already holds a finished run")
    parser.add_argument("--labels", default=",".join(RUNS),
                        help=f"comma-separated runs to (re)do (default: {','.join(RUNS)}); "
                             "the analysis uses every finished run in --out")
    parser.add_argument("--out", default=str(ROOT / "build" / "drift"),
                        help="folder for the runs (default: build/drift)")
    parser.add_argument("--write", default=str(contract.DRIFT_FILE),
                        help="where to write the measurement (default: reports/drift.json)")
    parser.add_argument("--update-tolerances", action="store_true",
                        help="only recompute the derived tolerances of an existing drift file")
    parser.add_argument("--tree", default=str(ROOT),
                        help="run the notebooks and helpers.py of another copy of the project, "
                             "e.g. a clean `git archive HEAD | tar -x -C DIR` while the working "
                             "tree is being edited (default: this checkout)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------


def cpu_env(isa: str | None) -> dict:
    """The environment of a run: ONEDNN_MAX_CPU_ISA=isa, or unset for native (helpers.py then
    applies the project's own cap)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


def finished(folder: Path) -> bool:
    return (folder / "report.html").is_file()  # run_series.py writes it last


def run_one(label: str, out: Path, number: int, total: int, tree: Path = ROOT) -> bool:
    """One full series run into out/label, its console output into out/label.log."""
    isa, seed = RUNS[label]
    folder, log = out / label, out / f"{label}.log"
    if folder.exists():
        shutil.rmtree(folder)
    env = cpu_env(isa)
    if tree != ROOT:  # that tree's helpers.py before the editable install of this one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree),
                                                          os.environ.get("PYTHONPATH")]))
    command = [sys.executable, str(tree / "scripts" / "run_series.py"), "--data", str(DATA),
               "--output", str(folder), "--seed", str(seed)]
    print(f"[{number}/{total}] {label}: running the series (seed {seed}, "
          f"ONEDNN_MAX_CPU_ISA={isa or 'native'}), log: {log.relative_to(ROOT)}", flush=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            handle.write(line)
            if re.match(r"\[\d+/\d+\] \S+ done", line):
                print(f"      {label} {line.strip()}", flush=True)
        code = proc.wait()
    seconds = time.monotonic() - started
    if code == 0:  # what produced this run, for the analysis (also with --reuse)
        (folder / RUN_INFO).write_text(json.dumps(
            {"source": source_description(tree), "onednn_max_cpu_isa": isa or "native",
             "seed": seed, "seconds": round(seconds)},
            indent=2) + "\n", encoding="utf-8")
    if code != 0:
        print(f"[{number}/{total}] {label}: FAILED (exit {code}) after {seconds:.0f} s; "
              f"see {log}", flush=True)
        return False
    print(f"[{number}/{total}] {label}: done in {seconds:.0f} s", flush=True)
    return True


# ------------------------------------------------------------------------------------------
# Analysis
# ------------------------------------------------------------------------------------------


def load_metrics(folder: Path) -> dict:
    return {p.name: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((folder / "metrics").glob("*.json"))}


def text_deviations(leaf: contract.Leaf, relative: bool) -> list[float]:
    """Deviations of the numbers inside a formatted string (e.g. "0.777 / 0.753")."""
    _, a = contract.split_numbers(leaf.committed)
    _, b = contract.split_numbers(leaf.fresh)
    out = []
    for x, y in zip(a, b):
        d = abs(y.value - x.value)
        out.append(d / abs(x.value) if relative and x.value else d)
    return out


def compare_runs(reference: dict, other: dict) -> dict:
    """Deviations of `other` from `reference` under the contract's classification."""
    result = {"deviations": {name: [] for name in contract.CATEGORIES},
              "where": {name: [] for name in contract.CATEGORIES}, "exact_compared": 0,
              "exact_differed": [], "tf_exact_moved": [], "structure": [], "rank_changes": 0}
    for name, committed in reference.items():
        if name in contract_excluded():
            continue
        fresh = other.get(name)
        if fresh is None:
            result["structure"].append(f"{name}: missing")
            continue
        for item in contract.metric_leaves(name, committed, fresh):
            if isinstance(item, contract.Structure):
                result["structure"].append(f"{name}: {item.path}: {item.message}")
                continue
            if item.category == contract.RANK:
                result["rank_changes"] += item.committed != item.fresh
            elif item.category is not None:
                relative = contract.CATEGORIES[item.category][0]
                if isinstance(item.committed, str):
                    found = text_deviations(item, relative)
                else:
                    found = [contract.leaf_deviation(item)]
                for deviation in found:
                    if deviation is not None:
                        result["deviations"][item.category].append(deviation)
                        result["where"][item.category].append(f"{name} {item.path}")
            elif item.tf:  # a non-metric value in a TF-derived row: exact by rule
                if item.committed != item.fresh:
                    result["tf_exact_moved"].append(
                        f"{name}: {item.path}: {item.committed!r} -> {item.fresh!r}")
            elif contract._is_number(item.committed):  # scikit-learn-derived number
                result["exact_compared"] += 1
                if item.committed != item.fresh or type(item.committed) is not type(item.fresh):
                    result["exact_differed"].append(
                        f"{name}: {item.path}: {item.committed!r} -> {item.fresh!r}")
    return result


def contract_excluded() -> set:
    return {"benchmark.json", "drift.json"}


def table_of(where: str) -> str:
    """'05_grid.json grid[learning_rate=0.01, ...].split2_r2' -> '05_grid.json grid'."""
    file, path = where.split(" ", 1)
    return f"{file} {re.split(r'[.[]', path, maxsplit=1)[0]}"


def figure_rms(reference: Path, other: Path) -> dict:
    """Image RMS per figure of reference/figures against other/figures."""
    out = {}
    for png in sorted((reference / "figures").glob("*.png")):
        twin = other / "figures" / png.name
        out[png.stem] = contract.image_rms(png, twin) if twin.is_file() else None
    return out


def differing_cells(reference: Path, other: Path, contract_now: contract.Contract) -> list:
    """Code cells whose outputs differ between two runs of the notebooks (exact comparison,
    after nbval's sanitizers and with the run folder masked): these cells must be tagged
    tf-derived; says whether the cell's printed-number tolerance (its `tolerance:` tag, else
    the loosest score category) covers them."""
    import nbformat

    base = contract.sanitizer_from_file(SANITIZERS)
    cells = []
    for path in sorted((reference / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        twin = other / "notebooks" / path.name
        if not twin.is_file():
            continue

        def sanitize(text, folders=(reference, other)):
            for folder in folders:  # notebooks print the run folder, absolute or shortened
                text = text.replace(str(folder), "<OUT>").replace(f"{folder.name}/", "<OUT>/")
            return base(text)

        def code(nb):
            return [c for c in nb.cells if c.cell_type == "code" and "injected-parameters"
                    not in c.metadata.get("tags", [])]

        a, b = code(nbformat.read(path, 4)), code(nbformat.read(twin, 4))
        for number, (x, y) in enumerate(zip(a, b)):
            exact = contract.compare_cell_outputs(x.outputs, y.outputs, None, sanitize)
            if exact:
                tolerant = contract.compare_cell_outputs(x.outputs, y.outputs,
                                                         contract_now.for_cell(x), sanitize)
                first = next((ln for ln in x.source.splitlines() if ln.strip()), "")
                cells.append({"notebook": path.stem, "cell": number, "source": first[:80],
                              "tagged_tf_derived": contract.is_tf_cell(x),
                              "within_printed_tolerance": not tolerant,
                              "example": (tolerant or exact)[0][:400]})
    return cells


def host_description() -> str:
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == platform.machine():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [name.upper() for name in ("avx512f", "avx2", "fma", "avx", "sse4_2") if name in flags]
    return f"{model} ({'+'.join(isa) or 'unknown ISA'})"


def source_description(tree: Path) -> str:
    """Which code was measured: the commit, and whether notebooks/helpers had local edits."""
    def git(*args):
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    if tree != ROOT:
        where = tree.relative_to(ROOT) if tree.is_relative_to(ROOT) else tree
        return f"copy of the project in {where} (this checkout is at {commit})"
    dirty = git("status", "--porcelain", "--", "helpers.py", "notebooks")
    return f"commit {commit}" + (" with local edits to helpers.py/notebooks" if dirty else "")


def summarize(values: list) -> dict:
    finite = [v for v in values if v is not None]
    if not finite:
        return {"median": None, "max": None}
    return {"median": statistics.median(finite), "max": max(finite)}


def derive(drift: dict) -> list[str]:
    """(Re)compute the derived fields (floor, tolerance, check) in place; return warnings."""
    warnings = []
    entries = [(name, drift["categories"][name]) for name in drift["categories"]]
    entries.append(("image", drift["image"]))
    for name, entry in entries:
        entry["floor"] = contract.IMAGE_FLOOR if name == "image" else contract.FLOORS[name]
        entry["tolerance"] = contract.derive_tolerance(name, entry["cpu_max"])
        typical = entry.get("other_seed_median")
        entry["tolerance_below_typical_other_seed"] = (None if typical is None
                                                       else entry["tolerance"] < typical)
        if typical is not None and not entry["tolerance"] < typical:
            warnings.append(f"{name}: tolerance {entry['tolerance']:g} is not below the typical "
                            f"other-seed deviation {typical:.3g}: the check could not tell a "
                            "real change from CPU drift")
    drift["safety"] = contract.SAFETY
    return warnings


def analyse(out: Path) -> dict:
    folders = {label: out / label for label in RUNS if finished(out / label)}
    if REFERENCE not in folders:
        raise SystemExit(f"no finished {REFERENCE} run in {out}; run without --reuse")
    reference = load_metrics(folders[REFERENCE])
    emulated = [label for label in EMULATED if label in folders]
    if not emulated:
        raise SystemExit(f"no finished emulated run ({', '.join(EMULATED)}) in {out}")
    cpu = {label: compare_runs(reference, load_metrics(folders[label])) for label in emulated}
    seed = (compare_runs(reference, load_metrics(folders[OTHER_SEED]))
            if OTHER_SEED in folders else None)

    categories = {}
    for name, (relative, covers) in contract.CATEGORIES.items():
        by_target = {label: max(cpu[label]["deviations"][name], default=0.0)
                     for label in emulated}
        other = summarize(seed["deviations"][name]) if seed else summarize([])
        by_table, largest = {}, (0.0, None)
        for label in emulated:
            for value, where in zip(cpu[label]["deviations"][name], cpu[label]["where"][name]):
                table = table_of(where)
                by_table[table] = max(by_table.get(table, 0.0), value)
                largest = max(largest, (value, where), key=lambda x: x[0])
        categories[name] = {
            "relative": relative, "covers": covers,
            "values": len(cpu[emulated[0]]["deviations"][name]),
            "cpu_max_by_target": by_target, "cpu_max": max(by_target.values()),
            "cpu_max_at": largest[1], "cpu_max_by_table": by_table,
            "cpu_median": summarize([v for label in emulated
                                     for v in cpu[label]["deviations"][name]])["median"],
            "other_seed_median": other["median"], "other_seed_max": other["max"]}

    figures = {"cpu_rms": {}, "other_seed_rms": {}}
    exact_figures_differed = []
    for label in emulated:
        for stem, rms in figure_rms(folders[REFERENCE], folders[label]).items():
            kind = contract.figure_kind(stem)
            figures["cpu_rms"].setdefault(stem, {"kind": kind})[label] = rms
            if kind == "exact" and rms:
                exact_figures_differed.append(f"{stem} ({label}): RMS {rms:.3f}")
    if seed:
        for stem, rms in figure_rms(folders[REFERENCE], folders[OTHER_SEED]).items():
            figures["other_seed_rms"][stem] = rms
    tf_cpu = [rms for entry in figures["cpu_rms"].values() if entry["kind"] == "tf"
              for label, rms in entry.items() if label != "kind" and rms is not None]
    tf_seed = [rms for stem, rms in figures["other_seed_rms"].items()
               if contract.figure_kind(stem) == "tf" and rms is not None]
    image = {"what": "RMS pixel difference (0-255) of figures showing TF results",
             "cpu_max": max(tf_cpu, default=0.0), **figures,
             "other_seed_median": summarize(tf_seed)["median"],
             "other_seed_max": summarize(tf_seed)["max"]}

    drift = {
        "about": "TF drift across emulated CPUs vs the change from another seed; written by "
                 "scripts/measure_drift.py, read by tests/contract.py (tolerances).",
        "date": date.today().isoformat(),
        "host": host_description(),
        "runs": {label: run_info(label, folders[label]) for label in folders},
        "categories": categories,
        "image": image,
        "scikit_learn_exact": {
            "values_compared": sum(cpu[label]["exact_compared"] for label in emulated),
            "values_differed": sum(len(cpu[label]["exact_differed"]) for label in emulated),
            "examples": [x for label in emulated for x in cpu[label]["exact_differed"]][:20],
            "figures_differed": exact_figures_differed},
        "tf_values_exact_by_rule_that_moved": sorted(
            {x for label in emulated for x in cpu[label]["tf_exact_moved"]})[:50],
        "structure_differences_across_cpus": sorted(
            {x for label in emulated for x in cpu[label]["structure"]})[:50],
        "rank_changes_across_cpus": {label: cpu[label]["rank_changes"] for label in emulated},
    }
    if seed:
        drift["other_seed_summary"] = {
            "structure_differences": len(seed["structure"]),
            "scikit_learn_values_differed": len(seed["exact_differed"])}
    derive(drift)
    drift["cells_differing_across_cpus"] = []
    tolerance_now = contract_from(drift)
    for label in emulated:
        for cell in differing_cells(folders[REFERENCE], folders[label], tolerance_now):
            cell["target"] = label
            drift["cells_differing_across_cpus"].append(cell)
    return drift


def run_info(label: str, folder: Path) -> dict:
    """How a run was made: its drift-run.json, else what RUNS says (source unknown)."""
    path = folder / RUN_INFO
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    isa, seed = RUNS[label]
    return {"source": "unknown", "onednn_max_cpu_isa": isa or "native", "seed": seed}


def contract_from(drift: dict) -> contract.Contract:
    """The contract the test session will use once this drift file is committed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drift.json"
        path.write_text(json.dumps(drift), encoding="utf-8")
        return contract.load_contract(path)


def report(drift: dict) -> list[str]:
    """Print the measurement; return the failed checks."""
    problems = []
    print(f"\nCPU drift vs another seed ({', '.join(drift['runs'])}):")
    print(f"  {'category':14s} {'values':>6s} {'CPU max':>10s} {'seed median':>12s} "
          f"{'seed max':>10s} {'tolerance':>10s}")
    for name, e in [*drift["categories"].items(), ("image", drift["image"])]:
        rel = e.get("relative")

        def show(v, rel=rel):
            return "-" if v is None else (f"{v:.3%}" if rel else f"{v:.3g}")

        print(f"  {name:14s} {e.get('values', ''):>6} {show(e['cpu_max']):>10s} "
              f"{show(e['other_seed_median']):>12s} {show(e['other_seed_max']):>10s} "
              f"{show(e['tolerance']):>10s}")
    exact = drift["scikit_learn_exact"]
    print(f"\nscikit-learn values compared across CPU targets: {exact['values_compared']}, "
          f"differed: {exact['values_differed']}")
    if exact["values_differed"] or exact["figures_differed"]:
        problems.append("scikit-learn results differ across CPU targets: "
                        + "; ".join(exact["examples"][:5] + exact["figures_differed"]))
    if drift["tf_values_exact_by_rule_that_moved"]:
        problems.append("values the contract treats as exact moved across CPUs (give them a "
                        "metric name or extend tests/contract.py): "
                        + "; ".join(drift["tf_values_exact_by_rule_that_moved"][:5]))
    if drift["structure_differences_across_cpus"]:
        problems.append("metrics structure differs across CPUs: "
                        + "; ".join(drift["structure_differences_across_cpus"][:5]))
    untagged = [c for c in drift["cells_differing_across_cpus"] if not c["tagged_tf_derived"]]
    uncovered = [c for c in drift["cells_differing_across_cpus"]
                 if not c["within_printed_tolerance"]]
    print(f"notebook cells whose output differs across CPUs: "
          f"{len(drift['cells_differing_across_cpus'])} "
          f"(untagged: {len(untagged)}, beyond the printed tolerance: {len(uncovered)})")
    for cell in sorted({(c["notebook"], c["cell"], c["source"], c["tagged_tf_derived"],
                         c["within_printed_tolerance"]) for c in untagged + uncovered}):
        print(f"  {cell[0]} Cell {cell[1]}: tagged={cell[3]} within tolerance={cell[4]}  "
              f"{cell[2]}")
    if untagged:
        problems.append(f"{len(untagged)} cell outputs differ across CPUs but the cells are not "
                        f"tagged {contract.TF_TAG}")
    if uncovered:
        problems.append(f"{len(uncovered)} cell outputs differ across CPUs beyond the printed "
                        "tolerance")
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    target = Path(args.write)
    if args.update_tolerances:
        if not target.is_file():
            print(f"error: {target} does not exist; run without --update-tolerances",
                  file=sys.stderr)
            return 2
        drift = json.loads(target.read_text(encoding="utf-8"))
        warnings = derive(drift)
        target.write_text(json.dumps(drift, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
        for warning in warnings:
            print(f"WARNING: {warning}")
        print(f"updated the derived tolerances in {target}")
        return 0
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    unknown = [x for x in labels if x not in RUNS]
    if unknown:
        print(f"error: unknown labels {unknown}; known: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    if not DATA.is_file():
        print(f"error: {DATA} is missing; the drift is measured on the real data file",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = [x for x in labels if not (args.reuse and finished(out / x))]
    for label in labels:
        if label not in todo:
            print(f"reusing {label}: {out / label}")
    tree = Path(args.tree).resolve()
    for number, label in enumerate(todo, start=1):
        if not run_one(label, out, number, len(todo), tree):
            return 1
    drift = analyse(out)
    problems = report(drift)
    for warning in derive(drift):
        print(f"WARNING: {warning}")
    target.write_text(json.dumps(drift, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {target}")
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
