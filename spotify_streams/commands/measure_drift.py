"""Measure how far the results move between CPUs; write reports/drift.json (`make drift`).

    spotify-drift [--labels native,numpy-X86_V2,...] [--only 02,03] [--reuse]
                  [--out build/drift] [--write FILE] [--tree DIR]
                  (also: python scripts/measure_drift.py ...)

Runs the series (run_series, real data file) once per label into build/drift/<label>/
(log: <label>.log). Labels: native; numpy-<level> (NPY_DISABLE_CPU_FEATURES; by default each
level below this CPU's own, e.g. numpy-X86_V2); openblas-<core type> (OPENBLAS_CORETYPE;
default Sandybridge); onednn-<ISA> (ONEDNN_MAX_CPU_ISA; default AVX and SSE41); seed<N>
(native with another seed, default seed43: what a real change looks like).

A probe first checks that numpy and OpenBLAS really use the emulated kernels. Each emulated
run is compared with native under spotify_streams/contract.py's rule: T = the 1-2-5 step at or above
SAFETY x the largest normalized float drift (the image tolerance likewise). Any exact value
that moves (a choice, a count, a row) or cell that breaks the rule is a FAILED CHECK; T must
stay below another seed's typical change (else a warning). Exit: 0 ok, 1 failed, 2 usage.
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

from spotify_streams import contract  # the rule
from spotify_streams.config import BUILD_DIR, RAW_DATA, ROOT
from spotify_streams.runtime import configure_runtime

DATA = RAW_DATA
DOCS = ROOT / "docs" / "reproducibility.md"
SANITIZERS = ROOT / "tests" / "nbval_sanitize.cfg"  # nbval's sanitizers (a data file)
VARIABLES = ("NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA")
MECHANISMS = {"numpy": VARIABLES[0], "openblas": VARIABLES[1], "onednn": VARIABLES[2]}
REFERENCE, SEED = "native", 42
RUN_INFO = "drift-run.json"  # written into each finished run folder
PROBE = ("import json, numpy, threadpoolctl; print(json.dumps({'numpy_found': numpy.show_config("
         "mode='dicts')['SIMD Extensions'].get('found', []), 'openblas': sorted({i.get("
         "'architecture') for i in threadpoolctl.threadpool_info() if i['internal_api'] == "
         "'openblas'})}))")


def default_labels(levels: list) -> list[str]:
    return [REFERENCE, *(f"numpy-{level}" for level, _ in levels), "openblas-Sandybridge",
            "onednn-AVX", "onednn-SSE41", f"seed{SEED + 1}"]


def run_setting(label: str, levels: list) -> tuple[dict, int]:
    """(environment variables, seed) of a label; ValueError for an unknown label."""
    if label == REFERENCE:
        return {}, SEED
    if re.fullmatch(r"seed\d+", label):
        return {}, int(label[4:])
    mechanism, _, value = label.partition("-")
    if mechanism == "numpy":
        disable = dict(levels).get(value)
        if disable is None:
            raise ValueError(f"{label}: numpy levels below this CPU's own: "
                             f"{[level for level, _ in levels] or 'none'}")
        return {MECHANISMS[mechanism]: disable}, SEED
    if mechanism in MECHANISMS and value:
        return {MECHANISMS[mechanism]: value}, SEED
    raise ValueError(f"unknown label {label!r}: native, seedN, numpy-<level>, "
                     "openblas-<core type>, onednn-<instruction set>")


def probe(env: dict) -> dict:
    """What numpy and OpenBLAS use in a process started with env (raises if it differs from
    what env asks for: OpenBLAS silently ignores a core type it does not know)."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    disabled = set(env.get(VARIABLES[0], "").split())
    if disabled & set(seen["numpy_found"]):
        raise RuntimeError(f"numpy still uses {sorted(disabled & set(seen['numpy_found']))}")
    core = env.get(VARIABLES[1])
    if core and {a.casefold() for a in seen["openblas"]} != {core.casefold()}:
        raise RuntimeError(f"OPENBLAS_CORETYPE={core}: OpenBLAS uses {seen['openblas']}")
    return seen


def finished(folder: Path) -> bool:
    return (folder / RUN_INFO).is_file()


def run_one(label: str, levels: list, args, number: int, total: int) -> bool:
    """One series run into out/label (console output in out/label.log)."""
    variables, seed = run_setting(label, levels)
    out, tree = Path(args.out), Path(args.tree).resolve()
    folder, log = out / label, out / f"{label}.log"
    shutil.rmtree(folder, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | variables
    configure_runtime(environ=env)  # the series' settings where the emulation sets none
    if tree != ROOT:  # that tree's package before the editable install of this one
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    seen = probe(env)
    command = [sys.executable, "-m", "spotify_streams.commands.run_series", "--data", str(DATA),
               "--output", str(folder), "--seed", str(seed),
               *(["--only", args.only] if args.only else [])]
    print(f"[{number}/{total}] {label}: seed {seed}, {variables or 'no emulation'}, numpy "
          f"{seen['numpy_found'] or 'baseline'}, OpenBLAS {seen['openblas']}; log {log}",
          flush=True)
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.run(command, cwd=tree, env=env, stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - started)
    if code != 0:
        print(f"[{number}/{total}] {label}: FAILED (exit {code}) after {seconds} s; see {log}")
        return False
    commit = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or str(tree)
    (folder / RUN_INFO).write_text(json.dumps({"env": variables, "seed": seed, **seen, "seconds":
                                               seconds, "only": args.only, "code": commit}))
    print(f"[{number}/{total}] {label}: done in {seconds} s", flush=True)
    return True


# --- Analysis -----------------------------------------------------------------------------


def compare_reports(reference: Path, other: Path) -> dict:
    """One run against the reference: floats' drift, UNSTABLE floats, moved values, figures."""
    found = {"floats": [], "unstable": [], "exact": [], "figures": []}
    for path in sorted((reference / "metrics").glob("*.json")):
        twin = other / "metrics" / path.name
        if not twin.is_file():
            found["exact"].append(f"{path.name}: missing")
            continue
        items = contract.walk(json.loads(path.read_text(encoding="utf-8")),
                              json.loads(twin.read_text(encoding="utf-8")), name=path.name)
        for item in items:
            where = f"{path.name} {item.path}"
            if item.kind == "float":
                found["floats"].append((contract.normalized(item.committed, item.fresh), where))
            elif item.kind == "unstable":  # an UNSTABLE table's raw floats (not its text)
                if contract.is_float_pair(item.committed, item.fresh):
                    found["unstable"].append((contract.normalized(item.committed, item.fresh),
                                              path.name + " " + re.split(r"[.[]", item.path)[0]))
            elif not contract.same(item.committed, item.fresh):
                found["exact"].append(f"{where}: {item.committed!r} -> {item.fresh!r}")
    for path in sorted((reference / "figures").glob("*.png")):
        twin = other / "figures" / path.name
        rms = contract.image_rms(path, twin) if twin.is_file() else float("inf")
        found["figures"].append((rms, path.name))
    return found


def breaking_cells(reference: Path, other: Path, the_contract) -> list[str]:
    """Messages for notebook cells whose outputs break the rule between two runs."""
    import nbformat

    base = contract.sanitizer_from_file(SANITIZERS)

    def sanitize(text):  # the notebooks print their run folder
        for folder in (reference, other):
            text = text.replace(str(folder), "<OUT>").replace(f"{folder.name}/", "<OUT>/")
        return base(text)

    messages = []
    for path in sorted((reference / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        twin = other / "notebooks" / path.name
        if twin.is_file():
            messages += contract.compare_notebooks(nbformat.read(path, 4), nbformat.read(twin, 4),
                                                   the_contract, sanitize, path.stem)
    return messages


def largest(pairs: list) -> tuple:
    found = max(pairs, default=(0.0, None), key=lambda pair: pair[0])
    return found if found[0] > 0 else (0.0, None)  # None: nothing moved


def analyse(out: Path, labels: list[str]) -> dict:
    """The measurement from the finished runs in out (the reference and at least one other)."""
    runs = {label: json.loads((out / label / RUN_INFO).read_text(encoding="utf-8"))
            for label in labels if finished(out / label)}
    if REFERENCE not in runs or len(runs) < 2:
        raise SystemExit(f"need a finished {REFERENCE} run and another one in {out}")
    reference = out / REFERENCE
    emulated = [x for x in runs if x != REFERENCE and runs[x]["seed"] == runs[REFERENCE]["seed"]]
    seeded = [x for x in runs if runs[x]["seed"] != runs[REFERENCE]["seed"]]
    found = {label: compare_reports(reference, out / label) for label in emulated + seeded}
    floats = [(d, f"{w} ({x})") for x in emulated for d, w in found[x]["floats"]]
    figures = [(r, f"{w} ({x})") for x in emulated for r, w in found[x]["figures"]]
    float_max, image_max = largest(floats), largest(figures)
    unstable = {}
    for d, where in [pair for x in emulated for pair in found[x]["unstable"]]:
        unstable[where] = max(unstable.get(where, 0.0), d)
    drift = {
        "about": "The tolerances of spotify_streams/contract.py: T for every float, the image "
                 "tolerance for every figure, from the largest drift across emulated CPUs. "
                 "Written by spotify_streams/commands/measure_drift.py (make drift).",
        "source": f"measured by make drift on {host(runs[REFERENCE])}, {date.today()}"
                  + (f" (partial: notebooks {runs[REFERENCE]['only']})"
                     if runs[REFERENCE].get("only") else ""),
        "safety": contract.SAFETY, "floor": contract.FLOOR, "image_floor": contract.IMAGE_FLOOR,
        "runs": runs,
        "float_drift": {"max": float_max[0], "at": float_max[1], "values": len(floats),
                        "by_run": {x: largest(found[x]["floats"])[0] for x in emulated}},
        "image_drift": {"max": image_max[0], "at": image_max[1],
                        "by_run": {x: largest(found[x]["figures"])[0] for x in emulated}},
        "unstable_raw_drift": unstable,
        "tolerance": contract.derive_tolerance(float_max[0]),
        "image_tolerance": contract.derive_tolerance(image_max[0], contract.IMAGE_FLOOR),
    }
    the_contract = contract.Contract(drift["tolerance"], drift["image_tolerance"], "new")
    drift["failed_checks"] = [f"{x}: {m}" for x in emulated for m in found[x]["exact"]] + [
        f"{x}: {m}" for x in emulated for m in breaking_cells(reference, out / x, the_contract)]
    drift["warnings"] = []
    for x in seeded:  # what a real change looks like, and whether the rule sees it
        changes = [d for d, _ in found[x]["floats"]]
        rms = [r for r, _ in found[x]["figures"]]
        drift["other_seed"] = {
            "run": x, "float_median": statistics.median(changes) if changes else None,
            "floats_beyond_tolerance": sum(d > drift["tolerance"] for d in changes),
            "floats": len(changes), "image_median": statistics.median(rms) if rms else None}
        for what, typical, tolerance in (("float", drift["other_seed"]["float_median"],
                                          drift["tolerance"]),
                                         ("image", drift["other_seed"]["image_median"],
                                          drift["image_tolerance"])):
            if typical is not None and not tolerance < typical:
                drift["warnings"].append(
                    f"{what} tolerance {tolerance:g} is not below the typical change another "
                    f"seed makes ({typical:.3g}): the check cannot tell a real change from "
                    "CPU drift")
    return drift


def host(native: dict) -> str:
    """The CPU's model name and the kernels numpy and OpenBLAS chose on it (the native run)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")),
                 platform.machine())
    return (f"{model} (numpy {'+'.join(native.get('numpy_found', [])) or 'baseline'}, "
            f"OpenBLAS {'/'.join(native.get('openblas', [])) or '?'})")


# --- The generated block of docs/reproducibility.md ---------------------------------------

BLOCK = re.compile(r"(<!-- contract:start -->\n).*?(<!-- contract:end -->)", re.S)


def contract_block(drift: dict) -> str:
    """Markdown of the measured figures (docs/reproducibility.md; update_readme.py too)."""
    def show(value):
        return "–" if value is None else f"{value:.2g}"

    seed = drift.get("other_seed", {})
    runs = ", ".join(f"{label} ({', '.join(f'{k}={v}' for k, v in run.get('env', {}).items())})"
                     if run.get("env") else label for label, run in drift["runs"].items())
    lines = [
        "| | floats (normalized: \\|Δ\\| / max(1, \\|committed\\|)) | figures (RMS, 0-255) |",
        "|---|---|---|",
        f"| largest drift across emulated CPUs | {show(drift['float_drift']['max'])} "
        f"({drift['float_drift']['at']}) | {show(drift['image_drift']['max'])} "
        f"({drift['image_drift']['at']}) |",
        f"| typical change from another seed (median) | {show(seed.get('float_median'))} | "
        f"{show(seed.get('image_median'))} |",
        f"| **tolerance** | **T = {drift['tolerance']:g}** | **{drift['image_tolerance']:g}** |",
        "",
        f"Source: {drift['source']}. Runs: {runs}. Tolerance = the 1-2-5 step at or above "
        f"{drift['safety']} × the largest drift (floors {drift['floor']:g} and "
        f"{drift['image_floor']:g}). Failed checks: {len(drift['failed_checks'])}"
        + "".join(f"; {k}: raw drift {show(v)} (UNSTABLE: compared through its summary)"
                  for k, v in drift.get("unstable_raw_drift", {}).items()) + "."]
    return "\n".join(lines)


def render_docs(text: str, drift: dict) -> str:
    return BLOCK.sub(lambda m: m.group(1) + contract_block(drift) + "\n" + m.group(2), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", help="comma-separated runs (default: native, numpy at each "
                        "level below this CPU's, openblas-Sandybridge, onednn-AVX, onednn-SSE41, "
                        "seed43)")
    parser.add_argument("--only", help="notebooks to run, e.g. 02,03 (run_series.py --only)")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs")
    parser.add_argument("--out", default=str(BUILD_DIR / "drift"))
    parser.add_argument("--write", help="where to write the measurement (default: "
                        "reports/drift.json; with --only: <out>/drift.json)")
    parser.add_argument("--tree", default=str(ROOT), help="run the notebooks and the package "
                        "of another copy of the project (e.g. a clean `git archive` of HEAD)")
    args = parser.parse_args(argv)
    levels = contract.numpy_levels(contract.simd_extensions()) \
        if platform.machine().lower() in contract.X86 else []
    labels = args.labels.split(",") if args.labels else default_labels(levels)
    try:
        if any(v in os.environ for v in VARIABLES):
            raise ValueError(f"unset {', '.join(v for v in VARIABLES if v in os.environ)}: "
                             "the measurement starts from this CPU's own kernels")
        if not DATA.is_file():
            raise ValueError(f"{DATA} is missing; the drift is measured on the real file")
        [run_setting(label, levels) for label in labels]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    todo = [x for x in labels if not (args.reuse and finished(out / x))]
    for number, label in enumerate(todo, start=1):
        if not run_one(label, levels, args, number, len(todo)):
            return 1
    drift = analyse(out, labels)
    target = Path(args.write or (out / "drift.json" if args.only else contract.DRIFT_FILE))
    target.write_text(json.dumps(drift, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if target == contract.DRIFT_FILE:
        DOCS.write_text(render_docs(DOCS.read_text(encoding="utf-8"), drift), encoding="utf-8")
    print(f"\nlargest float drift {drift['float_drift']['max']:.3g} at "
          f"{drift['float_drift']['at']} -> T = {drift['tolerance']:g}\nlargest image drift "
          f"{drift['image_drift']['max']:.3g} at {drift['image_drift']['at']} -> image "
          f"tolerance {drift['image_tolerance']:g}\nother seed: {drift.get('other_seed')}\n"
          f"wrote {target}")
    for warning in drift["warnings"]:
        print(f"WARNING: {warning}")
    for failed in drift["failed_checks"]:
        print(f"FAILED CHECK (choices must hold on any CPU): {failed}")
    return 1 if drift["failed_checks"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
