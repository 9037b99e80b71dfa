"""The contract: drift within the rule passes; a real change fails, naming place and values."""

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import conftest
from spotify_streams import contract
from spotify_streams.commands import measure_drift
from spotify_streams.config import ROOT

RULE = contract.Contract(0.02, 10.0, "fixed for the tests")


def changed(payload, edit):
    fresh = json.loads(json.dumps(payload))  # a deep copy, as a metrics file reads back
    edit(fresh)
    return fresh


PAYLOAD = {"seed": 42, "n_test": 227, "flag": True, "tuned": {"learning_rate": 0.001},
           "test": [{"model": "hgb", "feature_set": "full", "r2": 0.854746, "median_factor": 2.18}]}
ROW = "test[model=hgb, feature_set=full]"


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["test"][0].update(r2=0.873746), None),  # +0.019: within T
    (lambda d: d["test"][0].update(median_factor=2.18 * 1.019), None),  # relative above 1
    (lambda d: d["test"][0].update(r2=0.875746), f"{ROW}.r2: committed 0.854746, fresh "
     "0.875746: difference +0.021 > tolerance 0.02 (T = 0.02 x max(1, |committed|))"),
    (lambda d: d["test"][0].update(median_factor=2.18 * 1.021),
     f"{ROW}.median_factor: committed 2.18, fresh 2.22578: difference +0.0458 > tolerance 0.0436"),
    (lambda d: d.update(n_test=228), "n_test: committed 227, fresh 228: compared exactly "
     "(type int)"),
    (lambda d: d.update(n_test=227.0), "n_test: committed 227, fresh 227.0: compared exactly "
     "(type int vs float)"),
    (lambda d: d["test"][0].update(model="rf"), f'{ROW}.model: committed "hgb", fresh "rf"'),
    (lambda d: d.update(flag=False), "flag: committed true, fresh false"),
    (lambda d: d["tuned"].update(learning_rate=0.01), "tuned.learning_rate: committed 0.001, "
     "fresh 0.01: compared exactly (a configuration choice, contract.CHOICES)"),
    (lambda d: d["test"].append(dict(d["test"][0])), "test (row count): structure differs: "
     "committed 1, fresh 2"),
    (lambda d: d["test"].insert(0, {"feature_set": "full", **d["test"].pop()}),
     f'{ROW}: structure differs: committed ["model", "feature_set", "r2", "median_factor"], '
     'fresh ["feature_set", "model", "r2", "median_factor"]'),
    (lambda d: d.pop("flag"), "(top level): structure differs")])
def test_the_rule_on_metrics(edit, expected):
    messages = contract.compare_metrics("06_results.json", PAYLOAD, changed(PAYLOAD, edit), RULE)
    assert messages == [] if expected is None else len(messages) == 1 and messages[0].startswith(
        f"06_results.json: {expected}"), messages


def grid(scores: list) -> dict:
    rows = [(0.001, 64), (0.001, 128), (0.01, 64), (0.01, 128)]
    return {"grid": [{"learning_rate": lr, "neurons": n, "split0_test_score": s,
                      "mean_test_score": s, "rank_test_score": r}
                     for r, ((lr, n), s) in enumerate(zip(rows, scores), start=1)]}


def test_unstable_table_is_compared_through_its_summary():
    committed = grid([0.77, 0.78, 0.70, 0.72])
    chaotic = changed(grid([0.80, 0.75, 0.70, 0.72]), lambda d: d["grid"][0].update(
        split0_test_score=0.47, rank_test_score=4))  # raw moves, marginal means within T
    assert contract.compare_metrics("05_grid.json", committed, chaotic, RULE) == []
    real = grid([0.77, 0.78, 0.75, 0.77])  # learning rate 0.01 better by 0.05
    message = contract.compare_metrics("05_grid.json", committed, real, RULE)[0]
    assert message.startswith("05_grid.json: grid (summary: grid_summary).learning_rate=0.01."
                              "mean_test_score: committed 0.71"), message
    fewer = changed(committed, lambda d: d["grid"].pop())
    assert any("grid (row count): structure differs: committed 4, fresh 3" in m
               for m in contract.compare_metrics("05_grid.json", committed, fewer, RULE))
    knobs = {"knob_effects": [{"knob": "epochs", "difference": -0.004, "se": 0.006,
                               "folds_won": "2 of 5", "verdict": "not shown"}]}
    for edit, fails in [({"se": 0.012, "folds_won": "1 of 5"}, False), ({"verdict": "real"}, True)]:
        fresh = changed(knobs, lambda d, e=edit: d["knob_effects"][0].update(e))
        assert bool(contract.compare_metrics("05_grid.json", knobs, fresh, RULE)) == fails


@pytest.mark.parametrize("committed, fresh, expected", [
    ("CV R² 0.347 ± 0.049 (15 folds)", "CV R² 0.366 ± 0.050 (15 folds)", None),
    ("R² 0.349", "R² 0.370", None),  # T + one unit of the last printed digit
    ("R² −0.0636", "R² -0.0645", None),
    ("2  ridge    0.004   0.022", "2  ridge   -0.003   0.013", None),  # a table's padding
    ("explains 34.7% of it", "explains 36.5% of it", None),
    ("error × 12.1", "error × 12.4", None),  # relative above 1: 0.02 x 12.1 + 0.1
    ("R² 0.347", "R² 0.369", "line 1: committed 0.347, fresh 0.369: difference +0.022 > "
     "tolerance 0.021 (T = 0.02 x max(1, |committed|) + 0.001 for the last printed digit)"),
    ("error × 12.1", "error × 12.5", "line 1: committed 12.1, fresh 12.5: difference +0.4 > "
     "tolerance 0.342"),
    ("a\n397 songs", "a\n398 songs", "line 2: count 397 -> 398 (a number without a decimal "
     "point is a count, compared exactly)"),
    ("1,234 streams", "1,235 streams", "line 1: count 1,234 -> 1,235"),
    ("30% of all", "31% of all", "line 1: count 30% -> 31%"),
    ("on 2023-07-14", "on 2023-07-15", "line 1: count 14 -> 15"),
    ("CV R² 0.347", "CV R2 0.347", "line 1: text differs")])
def test_the_rule_on_printed_text(committed, fresh, expected):
    messages = contract.compare_text(committed, fresh, RULE)
    assert messages == [] if expected is None else messages[0].startswith(expected), messages


def test_cell_outputs_and_notebooks():
    def html(text):
        return [nbformat.v4.new_output("execute_result", data={"text/html": text,
                                                               "text/plain": "x"})]

    def nb(*outputs, ignored=()):
        cells = [nbformat.v4.new_code_cell("x", outputs=out) for out in outputs]
        for i in ignored:
            cells[i].metadata["tags"] = ["nbval-ignore-output"]
        return nbformat.v4.new_notebook(cells=cells)

    stream = [nbformat.v4.new_output("stream", name="stdout", text="R² 0.347\n")]
    [message] = contract.compare_notebooks(nb(stream, html("<td>0.347</td>")),
                                           nb(stream, html("<td>0.400</td>")), RULE, name="06")
    assert message.startswith("06 Cell 1: text/html: line 1: committed 0.347, fresh 0.400")
    assert message.endswith("\n    committed: <td>0.347</td>\n    fresh:     <td>0.400</td>")
    assert contract.compare_notebooks(nb(stream, html("1"), ignored=[1]),
                                      nb(stream, html("2")), RULE) == []
    [message] = contract.compare_notebooks(nb(stream), nb(html("<td>0.347</td>")), RULE)
    assert "Cell 0: output kinds differ" in message
    pieces = [nbformat.v4.new_output("stream", text=t) for t in ["1/4\r", "4/4\n0.3x\b", "47\n"]]
    assert contract.output_texts(pieces) == {"stream stdout": ["4/4\n0.347\n"]}  # as nbval shows
    [masked] = contract.mask_outputs(html("<td>0.347</td>"))
    assert masked["data"]["text/html"] == "<td><float></td>"  # for nbval's own comparison


def png(dark=0, shade=200, width=60) -> bytes:  # width x 40 grey; `dark` pixels of row 0
    img = Image.new("RGB", (width, 40), (200, 200, 200))  # darker by `shade`
    img.paste((200 - shade,) * 3, (0, 0, dark, 1))
    img.save(out := io.BytesIO(), format="PNG")
    return out.getvalue()


def test_figures_within_the_image_tolerance(tmp_path):
    assert contract.compare_figure(png(), png(dark=60, shade=20), "cv.png", RULE) is None
    message = contract.compare_figure(png(), png(dark=60), "cv.png", RULE, diff_dir=tmp_path)
    assert message.startswith("cv.png: RMS 31.623 > image tolerance 10; difference image: ")
    assert (tmp_path / "cv-diff.png").is_file()
    assert contract.compare_figure(png(), png(width=61), "cv.png", RULE, diff_dir=tmp_path) == \
        "cv.png: image size changed > image tolerance 10"  # and no stale difference image named


@pytest.mark.parametrize("simd, levels", [  # AVX2: test_emulation_defaults_and_the_header
    ({"baseline": ["X86_V2"], "found": ["X86_V3", "X86_V4", "AVX512_ICL"]},
     [("X86_V3", "X86_V4 AVX512_ICL"), ("X86_V2", "X86_V3 X86_V4 AVX512_ICL")]),
    ({"baseline": ["X86_V2"], "not found": ["X86_V3"]}, []),
    ({"baseline": ["NEON", "NEON_FP16", "ASIMD"], "found": ["ASIMDHP", "ASIMDDP"]}, [])])
def test_numpy_levels_below_the_machines_own(simd, levels):
    assert contract.numpy_levels(simd) == levels


@pytest.mark.parametrize("env, machine, added, line", [
    ({}, "x86_64", {"NPY_DISABLE_CPU_FEATURES": "X86_V3", "ONEDNN_MAX_CPU_ISA": "SSE41"},
     "emulating another CPU: numpy X86_V2 (NPY_DISABLE_CPU_FEATURES=X86_V3), oneDNN SSE41 "
     "(ONEDNN_MAX_CPU_ISA=SSE41), OpenBLAS native (make drift covers OPENBLAS_CORETYPE); "
     "TEST_EMULATE=native to test as this CPU"),
    ({"TEST_EMULATE": "native"}, "x86_64", {}, "testing as this CPU: numpy native"),
    ({"OPENBLAS_CORETYPE": "Sandybridge", "ONEDNN_MAX_CPU_ISA": "AVX"}, "x86_64",
     {"NPY_DISABLE_CPU_FEATURES": "X86_V3"}, "emulating another CPU: numpy X86_V2 (NPY_DISABLE"
     "_CPU_FEATURES=X86_V3), oneDNN as set (ONEDNN_MAX_CPU_ISA=AVX), OpenBLAS as set"),
    ({}, "aarch64", {}, "testing as this CPU: numpy native (aarch64 is not x86)")])
def test_emulation_defaults_and_the_header(env, machine, added, line):
    avx2 = {"baseline": ["X86_V2"], "found": ["X86_V3"]}  # numpy's report on an AVX2 machine
    before = dict(env)
    assert conftest.emulate(env, machine, avx2).startswith(line)
    assert env == {**before, **added}


def test_every_mechanism_takes_the_emulated_kernels():
    """numpy and OpenBLAS take the lower kernels (probe); oneDNN's cap changes tf.matmul."""
    if os.uname().machine.lower() not in contract.X86:
        pytest.skip("numpy's X86 levels, OpenBLAS's core types, oneDNN's ISAs: x86 only")
    env = {k: v for k, v in os.environ.items() if k not in measure_drift.VARIABLES}

    def run(code, **variables):
        return subprocess.run([sys.executable, "-c", code], env={**env, **variables},
                              capture_output=True, text=True, check=True).stdout

    simd = json.loads(run("import json, spotify_streams.contract as c; print(json.dumps("
                          "c.simd_extensions()))"))  # this machine's (env: no emulation)
    assert "baseline" in simd and set(simd) <= {"baseline", "found", "not found"} and any(
        contract.X86_LEVEL.fullmatch(f) for f in simd["baseline"]), simd
    for _, disable in contract.numpy_levels(simd):
        seen = measure_drift.probe({**env, "NPY_DISABLE_CPU_FEATURES": disable})
        assert not set(disable.split()) & set(seen["numpy_found"])
    assert measure_drift.probe({**env, "OPENBLAS_CORETYPE": "Sandybridge"})["openblas"] == \
        ["Sandybridge"]
    with pytest.raises(RuntimeError, match="OPENBLAS_CORETYPE=Bogus: OpenBLAS uses"):
        measure_drift.probe({**env, "OPENBLAS_CORETYPE": "Bogus"})
    matmul = ("import numpy as np, tensorflow as tf; a = np.random.default_rng(0).normal(size=(64, "
              "300)).astype('float32'); print(tf.matmul(a, a.T).numpy().tobytes().hex()[-64:])")
    avx2, sse41 = (run(matmul, ONEDNN_MAX_CPU_ISA=isa) for isa in ("AVX2", "SSE41"))
    assert avx2.strip() and avx2 != sse41, (avx2, sse41)


SESSION_CELLS = [  # (printed now, committed output, tags)
    ("CV R² 0.3501 (15 folds)", "CV R² 0.3499 (15 folds)", []),
    ("CV R² 0.3501 (15 folds)", "CV R² 0.3901 (15 folds)", []), ("397 songs", "398 songs", []),
    ("CV R² 0.3501", "anything", ["nbval-ignore-output"])]


def test_the_session_applies_the_rule_to_every_cell():
    """A real nbval run on a throw-away notebook under build/ (where conftest.py applies)."""
    cells = [nbformat.v4.new_code_cell(f"print({now!r})", execution_count=n, metadata={
        "tags": tags}, outputs=[nbformat.v4.new_output("stream", name="stdout",
                                                       text=committed + "\n")])
             for n, (now, committed, tags) in enumerate(SESSION_CELLS, start=1)]
    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="test-contract-", dir=ROOT / "build") as folder:
        notebook = Path(folder, "rule.ipynb")
        nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
        out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "0", "-p",
                              "no:cacheprovider", str(notebook.relative_to(ROOT))],
                             cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    outcomes = dict(re.findall(r"::Cell (\d) (PASSED|FAILED)", out))
    assert outcomes == {"0": "PASSED", "1": "FAILED", "2": "FAILED", "3": "PASSED"}, out[-3000:]
    assert "rule.ipynb Cell 1: stream stdout: line 1: committed 0.3901, fresh 0.3501: " \
           "difference -0.04 > tolerance 0.0201" in out, out[-3000:]
    assert "rule.ipynb Cell 2: stream stdout: line 1: count 398 -> 397" in out, out[-3000:]
    assert "TEST_EMULATE=native to test as this CPU" in out and "reproducibility contract: " \
           "drift.json: " in out


def test_reports_check_fails_on_a_tampered_metric_figure_or_an_unwritten_file(tmp_path):
    before = conftest._report_files()
    metric, figure = "reports/metrics/06_results.json", "reports/figures/importance.png"
    payload = json.loads(before[metric])
    payload["test"][-1]["r2"] = round(payload["test"][-1]["r2"] + 0.05, 6)
    after = {**before, metric: json.dumps(payload).encode(), figure: png()}  # another size
    assert conftest.report_differences(before, before) == []
    [image, metric] = conftest.report_differences(before, after)  # sorted by file
    assert re.match(r"06_results\.json: test\[model=\w+.*\]\.r2: committed .*, fresh .*: "
                    r"difference \+0\.05 > tolerance", metric), metric
    assert image.startswith("importance.png: image size changed > image tolerance "), image
    assert conftest.report_differences(before, after, exact=True)[0] == \
        f"{figure}: bytes differ (--reports-exact)"
    (tmp_path / "metrics").mkdir()  # and a notebook that ran without writing its metrics
    stale = tmp_path / "metrics" / "03_baseline.json"
    stale.write_text("{}")
    os.utime(stale, (1, 1))  # as copied from reports/: an old modification time
    ran = {"notebooks/03_baseline.ipynb", "notebooks/01_eda.ipynb"}  # 01 writes no metrics
    [message] = conftest.unwritten_reports(tmp_path, ran, started=2.0)
    assert "03_baseline.ipynb ran but did not write" in message
    assert conftest.unwritten_reports(tmp_path, ran, started=0.0) == []


def fake_run(out: Path, label: str, seed: int, r2: float, cell: str, rate=0.001, dark=0):
    folder = out / label
    for sub in ("metrics", "figures", "notebooks"):
        (folder / sub).mkdir(parents=True)
    metrics = {"tuned": {"learning_rate": rate}, "test": [{"model": "mlp", "r2": r2}]}
    (folder / "metrics" / "06_results.json").write_text(json.dumps(metrics))
    (folder / "figures" / "cv.png").write_bytes(png(dark=dark))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=cell)])]),
        folder / "notebooks" / "06_results.ipynb")
    (folder / measure_drift.RUN_INFO).write_text(json.dumps({"env": {}, "seed": seed}))


def test_make_drift_derives_the_tolerances_and_fails_a_moved_choice(tmp_path):
    """T: the 1-2-5 step at or above 2.5 x the largest drift, at least the floor."""
    assert [contract.round_up_125(x) for x in (0.00031, 0.001, 0.0011, 0.006, 3.2)] == \
        [0.0005, 0.001, 0.002, 0.01, 5.0]
    assert contract.derive_tolerance(0.0) == 0.001  # the floor
    fake_run(tmp_path, "native", 42, 0.80, "R² 0.786\n")
    fake_run(tmp_path, "numpy-X86_V2", 42, 0.8043, "R² 0.790\n", dark=60)
    fake_run(tmp_path, "onednn-SSE41", 42, 0.80, "R² 0.830\n", rate=0.01)
    fake_run(tmp_path, "seed43", 43, 0.70, "R² 0.700\n")
    drift = measure_drift.analyse(tmp_path, ["native", "numpy-X86_V2", "onednn-SSE41", "seed43"])
    assert drift["float_drift"]["max"] == pytest.approx(0.0043)
    assert drift["float_drift"]["at"] == "06_results.json test[model=mlp].r2 (numpy-X86_V2)"
    assert drift["tolerance"] == 0.02 and drift["image_tolerance"] == 100  # RMS 31.6 x 2.5
    [choice, cell] = drift["failed_checks"]
    assert choice == "onednn-SSE41: 06_results.json tuned.learning_rate: 0.001 -> 0.01"
    assert cell.startswith("onednn-SSE41: 06_results Cell 0: stream stdout: line 1: committed "
                           "0.786, fresh 0.830")
    assert drift["other_seed"]["float_median"] == pytest.approx(0.1)
    assert drift["other_seed"]["floats_beyond_tolerance"] == 1
    assert drift["warnings"] == ["image tolerance 100 is not below the typical change another "
                                 "seed makes (0): the check cannot tell a real change from "
                                 "CPU drift"]
