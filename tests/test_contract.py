"""The reproducibility contract (tests/contract.py) catches real changes and tolerates CPU drift.

Unit tests on small synthetic inputs; the nbval hook of conftest.py on a throw-away notebook;
with the real data file, notebook 03 re-executed with another seed must be reported (cells and
metrics), and for 04_mlp.json a change of the size another seed makes must fail while the
measured CPU drift passes.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import contract
import nbformat
import pytest
from contract import Contract, Tolerance

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "reports" / "metrics"

# A fixed contract, independent of reports/drift.json.
FIXED = Contract(
    tolerances={"r2": Tolerance(0.002, 0, "r2"), "std": Tolerance(0.002, 0, "std"),
                "mse": Tolerance(0.001, 0, "mse"), "mae": Tolerance(0.001, 0, "mae"),
                "median_factor": Tolerance(0, 0.005, "median_factor"),
                "loss": Tolerance(0.001, 0, "loss"), "grid": Tolerance(0.002, 0, "grid")},
    image_tolerance=1.0, source="fixed for the tests")


def results_payload() -> dict:
    return {
        "notebook": "06_results", "seed": 42,
        "tuned": {"learning_rate": 0.001, "neurons": 128, "epochs": 50},
        "test": [
            {"model": "hgb", "feature_set": "full", "r2": 0.854746, "median_factor": 1.276444},
            {"model": "tuned MLP", "feature_set": "full", "r2": 0.81712,
             "median_factor": 1.358842},
        ],
        "grid": [
            {"rank": 1, "learning_rate": 0.001, "neurons": 128, "mean_r2": 0.791105,
             "std_r2": 0.049},
            {"rank": 2, "learning_rate": 0.001, "neurons": 64, "mean_r2": 0.790784,
             "std_r2": 0.044},
        ],
    }


def changed(payload: dict, edit) -> dict:
    fresh = copy.deepcopy(payload)
    edit(fresh)
    return fresh


# ------------------------------------------------------------------------------------------
# Which numbers are exact
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, category", [
    ("r2", "r2"), ("r2_mean", "r2"), ("mean_r2", "r2"), ("split0_r2", "r2"),
    ("mean_test_score", "grid"), ("split3_test_score", "split"), ("r2_drop", "r2"),
    ("mean R² at each", "r2"), ("effect", "grid"),
    ("r2_std", "std"), ("std_r2", "std"), ("std_test_score", "split"),
    ("median_factor_std", "factor_std"), ("mse_std", "std"),
    ("mse", "mse"), ("mse_mean", "mse"), ("mean_mse", "mse"), ("mae", "mae"),
    ("mae_mean", "mae"), ("median_factor", "median_factor"),
    ("median_factor_mean", "median_factor"), ("loss", "loss"), ("val_loss", "loss"),
    ("rank", "rank"), ("rank_test_score", "rank"),
    ("learning_rate", None), ("neurons", None), ("epochs", None), ("model", None),
    ("feature_set", None), ("n_folds", None), ("seed", None), ("best value", None),
])
def test_metric_category_from_the_key_name(key, category):
    assert contract.metric_category(key) == category


@pytest.mark.parametrize("model, exact", [
    ("mean", True), ("linear", True), ("ridge", True), ("hgb", True), ("HGB tuned", True),
    ("rf", True), ("random forest (500 trees)", True),
    ("mlp", False), ("seed MLP", False), ("tuned MLP", False), ("ensemble", False),
])
def test_scikit_learn_models_are_exact(model, exact):
    assert contract.is_exact_model(model) is exact


def test_round_up_to_1_2_5_steps():
    assert [contract.round_up_125(x) for x in (0.00031, 0.001, 0.0011, 0.0021, 0.006, 3.2)] \
        == [0.0005, 0.001, 0.002, 0.005, 0.01, 5.0]


def test_missing_drift_file_falls_back_to_documented_defaults(tmp_path):
    loaded = contract.load_contract(tmp_path / "drift.json")
    assert not loaded.measured and "missing" in loaded.source
    expected = contract.derive_tolerance("r2", contract.DEFAULT_CPU_DRIFT["r2"])
    assert loaded.tolerances["r2"].abs == expected
    assert loaded.tolerances["median_factor"].rel > 0 and loaded.tolerances["r2"].rel == 0
    assert loaded.printed.abs == max(loaded.tolerances[n].abs for n in contract.PRINTED_DEFAULT)


def test_cells_name_their_tolerance_by_tag(tmp_path):
    loaded = contract.load_contract(tmp_path / "drift.json")

    def cell(*tags):
        return {"cell_type": "code", "metadata": {"tags": ["tf-derived", *tags]}}

    assert loaded.for_cell(cell()) == loaded.printed
    assert loaded.for_cell(cell("tolerance:loss")).abs == loaded.tolerances["loss"].abs
    both = loaded.for_cell(cell("tolerance:epochs,r2"))
    assert both.abs == max(loaded.tolerances["epochs"].abs, loaded.tolerances["r2"].abs)
    with pytest.raises(ValueError, match="unknown categories \\['speed'\\]"):
        loaded.for_cell(cell("tolerance:speed"))


def test_committed_drift_file_matches_the_contract_constants():
    if not contract.DRIFT_FILE.is_file():
        pytest.skip("reports/drift.json is absent (scripts/measure_drift.py writes it)")
    drift = json.loads(contract.DRIFT_FILE.read_text(encoding="utf-8"))
    loaded = contract.load_contract()
    for name, entry in drift["categories"].items():
        derived = loaded.tolerances[name].rel or loaded.tolerances[name].abs
        assert entry["tolerance"] == derived, (
            f"reports/drift.json records tolerance {entry['tolerance']} for {name}, the "
            f"contract derives {derived}: run scripts/measure_drift.py --update-tolerances")
    assert drift["image"]["tolerance"] == loaded.image_tolerance
    assert drift["scikit_learn_exact"]["values_differed"] == 0


# ------------------------------------------------------------------------------------------
# compare_metrics
# ------------------------------------------------------------------------------------------


def test_identical_metrics_pass():
    assert contract.compare_metrics("06_results.json", results_payload(),
                                    results_payload(), FIXED) == []


def test_tf_metric_below_tolerance_passes():
    fresh = changed(results_payload(), lambda d: d["test"][1].update(r2=0.81712 + 0.0015))
    assert contract.compare_metrics("06_results.json", results_payload(), fresh, FIXED) == []


def test_tf_metric_above_tolerance_fails_and_says_where_and_how_much():
    fresh = changed(results_payload(), lambda d: d["test"][1].update(r2=0.81712 + 0.0031))
    messages = contract.compare_metrics("06_results.json", results_payload(), fresh, FIXED)
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith("06_results.json: test[model=tuned MLP, feature_set=full].r2:")
    assert "committed 0.81712" in message and "fresh 0.82022" in message
    assert "difference +0.0031" in message and "tolerance 0.002 (r2)" in message


def test_median_factor_is_relative():
    ok = changed(results_payload(), lambda d: d["test"][1].update(median_factor=1.358842 * 1.004))
    bad = changed(results_payload(), lambda d: d["test"][1].update(median_factor=1.39))
    assert contract.compare_metrics("06_results.json", results_payload(), ok, FIXED) == []
    [message] = contract.compare_metrics("06_results.json", results_payload(), bad, FIXED)
    assert "median_factor" in message and "relative" in message and "+2.293%" in message


def test_scikit_learn_value_differing_by_1e12_fails():
    fresh = changed(results_payload(), lambda d: d["test"][0].update(r2=0.854746 + 1e-12))
    [message] = contract.compare_metrics("06_results.json", results_payload(), fresh, FIXED)
    assert "test[model=hgb, feature_set=full].r2" in message and "tolerance exact" in message


def test_notebooks_01_to_03_are_exact_even_for_unknown_models():
    committed = {"cv": [{"model": "mlp", "feature_set": "full", "r2_mean": 0.5}]}
    fresh = changed(committed, lambda d: d["cv"][0].update(r2_mean=0.5 + 1e-9))
    [message] = contract.compare_metrics("03_baseline.json", committed, fresh, FIXED)
    assert "cv[model=mlp, feature_set=full].r2_mean" in message and "exact" in message


def test_configuration_in_a_tf_row_is_exact():
    fresh = changed(results_payload(), lambda d: d["tuned"].update(epochs=51))
    [message] = contract.compare_metrics("06_results.json", results_payload(), fresh, FIXED)
    assert "tuned.epochs: committed 50, fresh 51" in message and "exact" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["test"].pop(), "test[model=tuned MLP, feature_set=full]: row missing"),
    (lambda d: d["test"][1].update(r2_drop=0.1), "extra keys ['r2_drop']"),
    (lambda d: d.pop("tuned"), "missing keys ['tuned']"),
    (lambda d: d["grid"].append({**d["grid"][0], "neurons": 32}), "row count differs"),
    (lambda d: d.update(test=d["test"][::-1]), "order of exact (scikit-learn) rows"),
])
def test_structure_changes_fail(edit, expected):
    payload = results_payload()
    if "order of exact" in expected:
        payload["test"].insert(0, {"model": "linear", "feature_set": "full", "r2": 0.78,
                                   "median_factor": 1.4})
    fresh = changed(payload, edit)
    messages = contract.compare_metrics("06_results.json", payload, fresh, FIXED)
    assert any(expected in m for m in messages), messages


def test_tf_ranks_and_row_order_follow_the_scores():
    def swap(d):
        first, second = d["grid"]
        first.update(rank=2, mean_r2=0.7905)
        second.update(rank=1, mean_r2=0.7911)
        d["grid"] = [second, first]

    fresh = changed(results_payload(), swap)
    assert contract.compare_metrics("06_results.json", results_payload(), fresh, FIXED) == []


def test_tables_without_model_in_tf_notebooks_get_tolerances():
    committed = {"cv_r2_by_epochs": [{"epochs": 10, "audio": -0.010309, "full": 0.735837}],
                 "knob_effects": [{"knob": "dropout", "mean R² at each": "0.766 / 0.764",
                                   "effect": 0.002741, "best value": "0.2"}]}

    def drift(d):
        d["cv_r2_by_epochs"][0].update(audio=-0.0111, full=0.7363)
        d["knob_effects"][0].update({"mean R² at each": "0.767 / 0.764", "effect": 0.0031})

    assert contract.compare_metrics("04_mlp.json", committed, changed(committed, drift),
                                    FIXED) == []
    big = changed(committed, lambda d: d["cv_r2_by_epochs"][0].update(full=0.75))
    [message] = contract.compare_metrics("04_mlp.json", committed, big, FIXED)
    assert "cv_r2_by_epochs[epochs=10].full: committed 0.735837, fresh 0.75" in message
    flipped = changed(committed, lambda d: d["knob_effects"][0].update({"best value": "0.3"}))
    [message] = contract.compare_metrics("04_mlp.json", committed, flipped, FIXED)
    assert "best value" in message and "exact" in message


# ------------------------------------------------------------------------------------------
# compare_figure
# ------------------------------------------------------------------------------------------


def png(tmp_path: Path, name: str, size=(60, 40), patch=0, shade=200) -> Path:
    """A grey test image; `patch` pixels of the first row darker by `shade`."""
    from PIL import Image

    img = Image.new("RGB", size, (200, 200, 200))
    for x in range(patch):
        img.putpixel((x, 0), (200 - shade,) * 3)
    path = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.png"
    img.save(path)
    return path


def test_identical_figures_pass(tmp_path):
    a = png(tmp_path, "a")
    assert contract.compare_figure(a, a.read_bytes(), "scores.png", FIXED) is None


def test_scikit_learn_figure_is_exact(tmp_path):
    message = contract.compare_figure(png(tmp_path, "a"), png(tmp_path, "b", patch=1),
                                      "scores.png", FIXED)
    assert message and message.startswith("scores.png: images differ: RMS")
    assert "tolerance 0 (exact" in message


def test_unknown_figure_is_exact(tmp_path):
    message = contract.compare_figure(png(tmp_path, "a"), png(tmp_path, "b", patch=1),
                                      "new_plot.png", FIXED)
    assert message and "exact" in message


def test_tf_figure_within_image_tolerance(tmp_path):
    small = png(tmp_path, "b", patch=1, shade=5)  # one pixel slightly darker: RMS 0.10
    large = png(tmp_path, "c", patch=60)  # a black line: RMS 31.6
    assert contract.image_rms(png(tmp_path, "a"), small) == pytest.approx(0.102, abs=1e-3)
    assert contract.compare_figure(png(tmp_path, "a"), small, "importance.png", FIXED) is None
    message = contract.compare_figure(png(tmp_path, "a"), large, "importance.png", FIXED,
                                      diff_dir=tmp_path / "diffs")
    assert message and "importance.png: images differ: RMS 31.623 > tolerance 1 (TF figure" \
        in message
    assert (tmp_path / "diffs" / "importance-diff.png").is_file()


def test_different_image_size_is_a_message_not_a_crash(tmp_path):
    message = contract.compare_figure(png(tmp_path, "a"), png(tmp_path, "b", size=(61, 40)),
                                      "importance.png", FIXED)
    assert message == ("importance.png: image size changed: committed 60x40 px, fresh 61x40 px "
                       f"(TF figure, measured image tolerance ({FIXED.source}))")


# ------------------------------------------------------------------------------------------
# compare_cell_outputs
# ------------------------------------------------------------------------------------------


def stream(text: str) -> list:
    return [nbformat.v4.new_output("stream", name="stdout", text=text)]


def result(html: str, plain: str) -> list:
    return [nbformat.v4.new_output("execute_result", data={"text/html": html,
                                                           "text/plain": plain},
                                   execution_count=1)]


R2 = Tolerance(0.002, 0, "r2")


def test_cell_numbers_within_tolerance_pass():
    committed = stream("full         CV R² 0.347 ± 0.049 (15 folds)\n")
    fresh = stream("full         CV R² 0.348 ± 0.050 (15 folds)\n")
    assert contract.compare_cell_outputs(committed, fresh, R2) == []


def test_cell_number_above_tolerance_fails_with_both_numbers():
    committed = stream("header\nfull         CV R² 0.347 ± 0.049\n")
    fresh = stream("header\nfull         CV R² 0.362 ± 0.049\n")
    [message] = contract.compare_cell_outputs(committed, fresh, R2, where="04_mlp Cell 7")
    assert message.startswith("04_mlp Cell 7: stream stdout: line 2: committed 0.347, "
                              "fresh 0.362: difference +0.015 > tolerance 0.003")
    assert "CV R² 0.347" in message and "CV R² 0.362" in message


def test_rounding_boundary_does_not_flip():
    # 0.34949 and 0.34951 print as 0.349 and 0.350: one unit of the last digit is allowed.
    tight = Tolerance(1e-4)
    assert contract.compare_cell_outputs(stream("R² 0.349"), stream("R² 0.350"), tight) == []
    assert contract.compare_cell_outputs(stream("R² 0.349"), stream("R² 0.351"), tight)


def test_text_change_fails_even_when_numbers_match():
    [message] = contract.compare_cell_outputs(stream("CV R² 0.347\n"), stream("CV R2 0.347\n"),
                                              R2)
    assert "text differs, not only in its numbers, at line 1" in message


@pytest.mark.parametrize("committed, ok, bad", [
    ("1,234,567 streams", "1,234,568 streams", "1,300,000 streams"),
    ("test R² −0.0636", "test R² -0.0645", "test R² 0.0636"),
    ("explains 34.7% of the variance", "explains 34.8% of the variance",
     "explains 36.0% of the variance"),
])
def test_number_formats(committed, ok, bad):
    tolerance = Tolerance(0.002, 0.005)
    assert contract.compare_cell_outputs(stream(committed), stream(ok), tolerance) == []
    assert contract.compare_cell_outputs(stream(committed), stream(bad), tolerance)


def test_scientific_notation_keeps_its_scale():
    # relative tolerance only: 1.20e-05 -> 1.21e-05 is one unit of the last digit
    committed, ok, bad = "lr 1.20e-05", "lr 1.21e-05", "lr 1.30e-05"
    tolerance = Tolerance(0, 0.005)
    assert contract.compare_cell_outputs(stream(committed), stream(ok), tolerance) == []
    assert contract.compare_cell_outputs(stream(committed), stream(bad), tolerance)


def test_identifiers_and_dates_are_not_numbers_inside_words():
    template, numbers = contract.split_numbers("split0_r2 log10 AVX2 on 2023-07-14: −1,234.5%")
    assert template == "split0_r2 log10 AVX2 on <N>-<N>-<N>: <N>%"
    assert [n.value for n in numbers] == [2023, 7, 14, -12.345]


def test_html_and_plain_outputs_are_compared():
    committed = result("<td>0.347</td><td>15</td>", "0.347  15")
    assert contract.compare_cell_outputs(committed, result("<td>0.348</td><td>15</td>",
                                                           "0.348  15"), R2) == []
    messages = contract.compare_cell_outputs(committed, result("<td>0.400</td><td>15</td>",
                                                               "0.400  15"), R2)
    assert any(m.startswith("cell: text/html: line 1: committed 0.347, fresh 0.400")
               for m in messages)


def test_missing_output_fails():
    messages = contract.compare_cell_outputs(stream("a 1\n") + result("<b>1</b>", "1"),
                                             stream("a 1\n"), R2)
    assert messages and "output kinds differ" in messages[0]


def test_exact_mode_fails_on_any_digit():
    [message] = contract.compare_cell_outputs(stream("R² 0.347"), stream("R² 0.348"), None)
    assert "line 1 differs (exact)" in message


def test_notebook_comparison_uses_the_tag():
    def nb(text, tagged):
        cell = nbformat.v4.new_code_cell("print(...)", outputs=stream(text))
        if tagged:
            cell.metadata["tags"] = [contract.TF_TAG]
        return nbformat.v4.new_notebook(cells=[cell])

    loose = Contract(FIXED.tolerances, 1.0, "test")
    tf = contract.compare_notebooks(nb("R² 0.347", True), nb("R² 0.348", False), loose)
    assert tf.messages == [] and tf.tf_cells == 1
    exact = contract.compare_notebooks(nb("R² 0.347", False), nb("R² 0.348", False), loose)
    assert exact.messages and "Cell 0" in exact.messages[0]


# ------------------------------------------------------------------------------------------
# conftest.py: emulated CPU, reports check, nbval hook
# ------------------------------------------------------------------------------------------


def test_emulated_cpu_flags():
    import conftest

    env = {}  # the default: emulate SSE4.1 through oneDNN's kernel choice
    line = conftest.emulate_cpu(env, machine="x86_64")
    assert env == {"ONEDNN_MAX_CPU_ISA": "SSE41"} and "TEST_CPU_ISA=native" in line
    env = {"TEST_CPU_ISA": "avx", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # overrides helpers' cap
    conftest.emulate_cpu(env, machine="x86_64")
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX"
    for env, machine in [({"TEST_CPU_ISA": "native"}, "x86_64"), ({}, "aarch64")]:
        before = dict(env)
        assert "native" in conftest.emulate_cpu(env, machine=machine)
        assert env == before
    with pytest.raises(pytest.UsageError, match="TEST_CPU_ISA=SSE4_2 is not one of oneDNN"):
        conftest.emulate_cpu({"TEST_CPU_ISA": "SSE4_2"}, machine="x86_64")


def test_emulated_cpu_changes_tensorflow_numbers():
    """The emulation is real: one small Keras fit under ONEDNN_MAX_CPU_ISA=SSE41 gives other
    floats than native (helpers' AVX2 cap), and the same floats again when repeated (a second
    fit in the same process; two processes agree as well, see test_mlp.py)."""
    code = ("import helpers, numpy as np; rng = np.random.default_rng(0); "
            "X = rng.normal(size=(200, 8)).astype('float32'); y = X.sum(1); "
            "fit = lambda: helpers.KerasMLP(epochs=5, batch_size=32).fit(X, y); "
            "print(*(fit().predict(X[:20]).tobytes().hex() for _ in range(2)))")

    if platform.machine().lower() not in {"x86_64", "amd64"}:
        pytest.skip("oneDNN instruction-set names are x86's")
    procs = {isa: subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                                   env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for isa in ["AVX2", "SSE41"]}
    out = {isa: proc.communicate(timeout=300) for isa, proc in procs.items()}
    assert all(proc.returncode == 0 for proc in procs.values()), out
    (native, native_again), (emulated, emulated_again) = (out[isa][0].split() for isa in out)
    assert native != emulated
    assert emulated == emulated_again and native == native_again


def test_reports_check_uses_the_contract():
    import conftest

    committed = json.dumps(results_payload()).encode()
    small = json.dumps(changed(results_payload(),
                               lambda d: d["test"][1].update(r2=0.81712 + 1e-5))).encode()
    key = "reports/metrics/06_results.json"
    assert conftest.report_differences({key: committed}, {key: small}) == []
    assert conftest.report_differences({key: committed}, {key: small}, exact=True) == [
        f"{key}: bytes differ (--reports-exact)"]
    assert conftest.report_differences({key: committed}, {}) == [f"{key}: deleted by the run"]


HOOK_CELLS = [  # (source, committed output, tagged)
    ('print("CV R² 0.3501 (15 folds)")', "CV R² 0.3499 (15 folds)\n", True),
    ('print("CV R² 0.3501 (15 folds)")', "CV R² 9.3501 (15 folds)\n", True),
    ('print("CV R² 0.3501 (15 folds)")', "CV R² 0.3499 (15 folds)\n", False),
]


def test_nbval_hook_tolerates_tagged_cells_only():
    """A real nbval run (its own kernel) on a throw-away notebook under build/ (inside the
    repo, so conftest.py and the pytest settings of pyproject.toml apply)."""
    folder = ROOT / "build" / f"test-contract-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        cells = []
        for number, (source, output, tagged) in enumerate(HOOK_CELLS, start=1):
            cell = nbformat.v4.new_code_cell(source, execution_count=number,
                                             outputs=stream(output))
            if tagged:
                cell.metadata["tags"] = [contract.TF_TAG]
            cells.append(cell)
        notebook = folder / "hook.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "0", "-p",
                               "no:cacheprovider", str(notebook.relative_to(ROOT))], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = proc.stdout
    outcomes = dict(re.findall(r"::Cell (\d) (PASSED|FAILED)", out))
    assert outcomes == {"0": "PASSED", "1": "FAILED", "2": "FAILED"}, out[-3000:]
    assert "hook.ipynb Cell 1 (tagged tf-derived): stream stdout: line 1: committed 9.3501, " \
           "fresh 0.3501: difference -9 > tolerance" in out, out[-3000:]
    assert "tolerance" in out and "CPU for TensorFlow" in out


# ------------------------------------------------------------------------------------------
# With the real data
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline_seed43(tmp_path_factory):
    """notebooks/03_baseline.ipynb executed with SEED=43 into a temp OUTPUT_DIR. The kernel
    gets OMP_NUM_THREADS=1: gradient boosting's OpenMP threads on a busy 2-core machine made
    the run 5x slower (67 s instead of 12 s with QUICK, measured)."""
    import conftest

    reason = conftest.notebook_skip_reason()
    if reason:
        pytest.skip(reason)
    import papermill

    from helpers import clean, load_raw, resolve_run, save_clean

    out = tmp_path_factory.mktemp("seed43")
    run = resolve_run(conftest.RAW_DATA, out)
    save_clean(clean(load_raw(conftest.RAW_DATA)), run.processed_path)
    executed = out / "03_baseline.ipynb"
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernel papermill starts
    try:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "03_baseline.ipynb"), str(executed),
            parameters={"DATA_PATH": str(conftest.RAW_DATA), "OUTPUT_DIR": str(out),
                        "SEED": 43},
            kernel_name="python3", cwd=str(ROOT / "notebooks"), progress_bar=False)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    return out, executed


def test_another_seed_changes_the_cells_of_notebook_03(baseline_seed43):
    _, executed = baseline_seed43
    committed = nbformat.read(ROOT / "notebooks" / "03_baseline.ipynb", as_version=4)
    fresh = nbformat.read(executed, as_version=4)
    sanitize = contract.sanitizer_from_file(ROOT / "tests" / "nbval_sanitize.cfg")
    result = contract.compare_notebooks(committed, fresh, sanitize=sanitize,
                                        name="03_baseline")
    assert result.messages, "re-running 03 with another seed went unnoticed"
    assert any("03_baseline Cell" in m and "committed" in m for m in result.messages)


def test_another_seed_changes_the_metrics_of_notebook_03(baseline_seed43):
    out, _ = baseline_seed43
    committed = json.loads((METRICS / "03_baseline.json").read_text(encoding="utf-8"))
    fresh = json.loads((out / "metrics" / "03_baseline.json").read_text(encoding="utf-8"))
    messages = contract.compare_metrics("03_baseline.json", committed, fresh)
    assert any(m.startswith("03_baseline.json: seed: committed 42, fresh 43") for m in messages)
    r2 = [m for m in messages if ".r2_mean: committed" in m]
    assert r2 and all("tolerance exact" in m and "difference" in m for m in r2), messages


def perturbed(payload: dict, name: str, size: dict) -> dict:
    """Every TF-derived metric of payload moved by size[category] (relative for
    median_factor), alternating in sign."""
    fresh = copy.deepcopy(payload)
    leaves = [leaf for leaf in contract.metric_leaves(name, payload, payload)
              if isinstance(leaf, contract.Leaf) and leaf.category in contract.CATEGORIES
              and isinstance(leaf.committed, float)]
    for number, leaf in enumerate(leaves):
        step = size[leaf.category] * (1 if number % 2 else -1)
        relative = contract.CATEGORIES[leaf.category][0]
        value = leaf.committed * (1 + step) if relative else leaf.committed + step
        set_by_path(fresh, leaf.path, value)
    return fresh


def set_by_path(payload: dict, path: str, value) -> None:
    """Set a value addressed by a contract key path such as cv[model=mlp, feature_set=full].r2"""
    node = payload
    parts = re.findall(r"([^.\[\]]+)(\[[^\]]*\])?\.?", path)
    for number, (key, selector) in enumerate(parts):
        last = number == len(parts) - 1
        if selector and selector[1:-1].isdigit():  # a row addressed by position
            node = node[key][int(selector[1:-1])]
            if last:
                raise ValueError(f"{path}: a path ends in a key")
        elif selector:
            pairs = dict(p.split("=", 1) for p in selector[1:-1].split(", "))
            rows = node[key]
            node = next(r for r in rows if all(str(r.get(k)) == v for k, v in pairs.items()))
        elif last:
            node[key] = value
        else:
            node = node[key]


def test_seed_sized_change_in_04_fails_while_cpu_drift_passes():
    if not contract.DRIFT_FILE.is_file():
        pytest.skip("reports/drift.json is absent: run scripts/measure_drift.py (make drift)")
    drift = json.loads(contract.DRIFT_FILE.read_text(encoding="utf-8"))
    committed = json.loads((METRICS / "04_mlp.json").read_text(encoding="utf-8"))
    cpu = {k: e["cpu_max"] for k, e in drift["categories"].items()}
    if drift["categories"]["r2"]["other_seed_median"] is None:
        pytest.skip("reports/drift.json has no other-seed run (make drift with the seed43 "
                    "label); test_another_seed_changes_the_cells_of_notebook_03 / _metrics_ prove "
                    "that a real change fails")
    seed = {k: e["other_seed_median"] or 0.0 for k, e in drift["categories"].items()}
    unable = {k: e for k, e in drift["categories"].items()
              if e["tolerance_below_typical_other_seed"] is False}
    assert not {"r2", "mae", "median_factor"} & set(unable), "\n".join(
        f"reports/drift.json: {k} tolerance {e['tolerance']:g} is not below the typical "
        f"other-seed change {e['other_seed_median']:.3g}: the contract cannot tell a real change "
        f"from CPU drift (largest CPU drift {e['cpu_max']:.3g} at {e.get('cpu_max_at')})"
        for k, e in unable.items())
    messages = contract.compare_metrics("04_mlp.json", committed,
                                        perturbed(committed, "04_mlp", cpu))
    assert messages == [], messages
    messages = contract.compare_metrics("04_mlp.json", committed,
                                        perturbed(committed, "04_mlp", seed))
    flagged = {m.split(":")[1].strip().rsplit(".", 1)[-1] for m in messages}
    assert {"r2_mean", "mae_mean", "median_factor_mean"} <= flagged, messages
    assert any("cv[model=mlp, feature_set=full].r2_mean" in m and "tolerance" in m
               for m in messages)


def test_contract_block_renders(tmp_path):
    spec = importlib.util.spec_from_file_location("update_readme",
                                                  ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    drift = {
        "host": "test CPU", "date": "2025-01-01", "safety": contract.SAFETY,
        "runs": {"native": {"onednn_max_cpu_isa": "native"}, "AVX": {"onednn_max_cpu_isa": "AVX"}},
        "categories": {name: {"relative": rel, "covers": covers, "cpu_max": 0.001,
                              "other_seed_median": 0.01, "tolerance": 0.005}
                       for name, (rel, covers) in contract.CATEGORIES.items()},
        "image": {"what": "RMS", "cpu_max": 0.3, "other_seed_median": 5.0, "tolerance": 2.0},
        "scikit_learn_exact": {"values_compared": 10, "values_differed": 0},
    }
    block = module.contract_block(drift)
    assert block.splitlines()[0].startswith("| category | what it covers | max drift")
    assert "| median_factor |" in block and "0.50%" in block and "10 values compared" in block
    if "<!-- contract:start -->" not in (ROOT / "README.md").read_text(encoding="utf-8"):
        assert "contract" not in module.blocks()


def test_session_writes_a_copy_of_the_reports_never_reports_itself(tmp_path, monkeypatch):
    """`git status` stays clean after the test session: the notebooks validated by nbval write
    their reports into a copy of the committed ones (SERIES_REPORTS_DIR), compared at the end."""
    import conftest
    import helpers

    committed, copy = tmp_path / "reports", tmp_path / "copy"
    (committed / "metrics").mkdir(parents=True)
    (committed / "metrics" / "04.json").write_bytes(b"committed")
    (committed / "benchmark.json").write_bytes(b"not checked")
    (copy / "metrics").mkdir(parents=True)
    (copy / "metrics" / "stale.json").write_bytes(b"from an earlier session")
    before = conftest.copy_committed_reports(committed, copy)
    assert before == {"reports/metrics/04.json": b"committed"}
    assert conftest._report_files(copy) == before  # the stale file is gone
    assert os.environ["SERIES_REPORTS_DIR"] == str(conftest.FRESH_REPORTS)
    real = helpers.resolve_run(conftest.RAW_DATA) if conftest.RAW_DATA.is_file() else None
    if real is not None and real.is_real:
        assert real.metrics_dir == conftest.FRESH_REPORTS / "metrics"


def test_a_notebook_that_ran_without_writing_its_metrics_is_reported(tmp_path):
    """The reports check compares the copy the notebooks wrote; if a notebook ran but its
    metrics in the copy are still the committed ones, the check would prove nothing."""
    import time

    import conftest

    fresh = tmp_path / "copy"
    (fresh / "metrics").mkdir(parents=True)
    stale = fresh / "metrics" / "03_baseline.json"
    stale.write_text("{}")
    os.utime(stale, (1, 1))  # as copied from reports/: an old modification time
    started = time.time()
    ran = {"notebooks/03_baseline.ipynb", "notebooks/01_eda.ipynb"}  # 01 writes no metrics
    messages = conftest.unwritten_reports(fresh, ran, started)
    assert len(messages) == 1 and "03_baseline.ipynb ran but did not write" in messages[0]
    stale.write_text("{}")  # rewritten now, as a notebook run would
    assert conftest.unwritten_reports(fresh, ran, started) == []
