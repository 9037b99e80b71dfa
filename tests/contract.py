"""The reproducibility contract of the committed results, in one place.

What must come out the same when the notebooks are re-executed on another machine:

* **Exact everywhere**: everything scikit-learn computes with a fixed seed (identical on any
  CPU), and everything that is not a metric: configuration values (learning_rate, neurons,
  epochs, ...), strings, counts, the structure of the metrics files (key sets and key order,
  row counts, which rows exist). Metrics files of notebooks 01-03 are exact as a whole.
* **TF-derived, compared within a tolerance**: anything TensorFlow trains. Its matrix
  products run on oneDNN kernels chosen for the host's instruction set (helpers.py caps them
  at AVX2; SSE4.1, AVX or ARM elsewhere), which changes the last bits of every float;
  training amplifies that, most in single fits, least in means over folds.
  In metrics files other than 01-03, a table row (a dict) with a ``model`` key is TF-derived
  unless the model is a scikit-learn model (EXACT_MODELS / EXACT_MODEL_PREFIXES); rows
  without ``model`` (and the file's top level) are TF-derived in the files of TF_NOTEBOOKS.
  In a TF-derived row only *metric* keys get a tolerance, by category from the key name
  (see metric_category): r2, std, mse, mae, median_factor (relative), loss, epochs. Keys named
  ``rank*`` are not compared by value: a rank follows from the scores, which are compared
  (two configurations closer than the tolerance may swap ranks on another CPU); for the same
  reason the order of TF-derived rows in a table is free, while the order of exact rows is not.
* **Figures**: figures of scikit-learn-only notebooks must be pixel-identical; figures that
  show TF results may differ by the measured image tolerance (RMS over pixels, 0-255 scale).
  FIGURE_KINDS maps figure name -> "exact" / "tf"; figures not listed there are exact.
* **Notebook cells** tagged ``tf-derived`` (cell metadata tags): the text of their outputs
  must match exactly except for the numbers in it, which may differ by the printed-number
  tolerance (the loosest metric category) plus one unit of the last printed digit.

Tolerances are not guessed: scripts/measure_drift.py runs the series natively and with
emulated older CPUs (ONEDNN_MAX_CPU_ISA=AVX / SSE41) and records the largest
deviation per category in reports/drift.json; tolerance = max(floor, SAFETY x that deviation),
rounded up to a 1-2-5 step. Without reports/drift.json, DEFAULT_CPU_DRIFT stands in (and
Contract.source says so).
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIFT_FILE = ROOT / "reports" / "drift.json"

# ------------------------------------------------------------------------------------------
# Which numbers are exact
# ------------------------------------------------------------------------------------------

EXACT_NOTEBOOKS = ("01", "02", "03")  # metrics files of these notebooks: exact as a whole
TF_NOTEBOOKS = ("04", "05", "06")  # here rows without a `model` key are TF-derived
# scikit-learn models (identical on any CPU); compared case-insensitively. Extend here.
EXACT_MODELS = frozenset({"mean", "linear", "ridge", "hgb"})
EXACT_MODEL_PREFIXES = ("hgb", "rf", "random forest")
# Never metrics, even inside a table whose name says what it scores (cv_r2_by_epochs):
CONFIG_KEYS = frozenset({"learning_rate", "dropout", "neurons", "batch_size", "epochs",
                         "seed", "n_folds", "n_test", "n_train", "quick", "fold", "repeat"})
# Metric keys whose name does not say their category (the effect of a knob on mean CV R²).
METRIC_ALIASES = {"effect": "grid", "epochs_trained": "epochs"}
# Tables whose metric values all belong to one category, whatever their keys say: 05's knob
# effects are differences of grid configurations' fold scores (chaotic at learning rate 0.01).
TABLE_CATEGORIES = {"knob_effects": "grid", "knob_effects_by_learning_rate": "grid"}
FORCED = "!"  # marks an inherited category that comes from TABLE_CATEGORIES
TF_TAG = "tf-derived"  # notebook cell tag: outputs compared with the printed-number tolerance
TOLERANCE_TAG = "tolerance:"  # + categories: a tf-derived cell that prints only those

# Metric categories: name -> (relative?, what it covers). Order = README table order.
CATEGORIES = {
    "r2": (False, "R² scores: r2, r2_mean, mean_r2, split<k>_r2, r2_drop, r2_difference "
                  "(05's grid: see grid, split)"),
    "std": (False, "spreads over folds: *_std, std_*"),
    "mse": (False, "mean squared error of log10(streams)"),
    "mae": (False, "mean absolute error of log10(streams)"),
    "median_factor": (True, "typical error factor 10^median(abs log10 error), relative"),
    "loss": (False, "training / validation losses of one fit, per epoch"),
    "epochs": (False, "epochs one fit trained before EarlyStopping stopped it"),
    "factor_std": (False, "spread over folds of the median factor (median_factor_std)"),
    "grid": (False, "05's grid: each configuration's mean R² over 5 folds (mean_test_score) "
                    "and the knob effects derived from them (knob_effects*); learning rate 0.01 "
                    "makes these far noisier than the 15-fold means"),
    "split": (False, "05's grid: each configuration's R² on one fold (split*_test_score) and "
                     "their spread (std_test_score); single fits, chaotic at learning rate 0.01"),
}
# The printed-number tolerance of a tf-derived cell without a `tolerance:` tag: the loosest of
# these. Cells that print losses or epoch counts (single fits, far noisier) must be tagged.
PRINTED_DEFAULT = ("r2", "std", "mse", "mae", "median_factor")
RANK = "rank"  # pseudo-category: not compared by value in TF-derived rows

# ------------------------------------------------------------------------------------------
# How large the tolerances are
# ------------------------------------------------------------------------------------------

# Two emulated targets are a small sample of the CPUs out there (ARM, AVX-512, other core
# counts): allow SAFETY times the largest drift seen; rounding up to the 1-2-5 series adds up
# to x2.5 more, so a tolerance is 2.5-6x the largest drift measured. For scale, a real other
# machine moved test R² -0.0636 -> -0.0645 and a median factor 2.066 -> 2.083 (+0.8 %);
# emulated SSE4_2 moved the same values by up to 0.001 and 0.7 % (first measurement).
SAFETY = 2.5
# Floors keep a tolerance sane when a category happened to drift very little in the
# measurement: values are stored with 6 decimals, so less than ~1e-5 would be noise-level.
FLOORS = {"r2": 1e-3, "std": 1e-3, "mse": 5e-4, "mae": 5e-4, "median_factor": 2e-3,
          "loss": 1e-3, "epochs": 1, "factor_std": 2e-3, "grid": 1e-3,
          "split": 1e-3}
IMAGE_FLOOR = 0.5  # RMS on the 0-255 scale
# Used when reports/drift.json is missing: largest CPU drift per category from the first
# measurement (native vs AVX / SSE4_2), leaving out the chaotic learning_rate=0.01 rows of
# 05_grid's table; loss had no values then and borrows r2's figure.
DEFAULT_CPU_DRIFT = {"r2": 0.0017, "std": 0.0041, "mse": 0.00022, "mae": 0.00067,
                     "median_factor": 0.007, "loss": 0.0017, "epochs": 1,
                     "factor_std": 0.0085, "grid": 0.0235, "split": 0.103}
DEFAULT_IMAGE_DRIFT = 0.1

NUMBER_PLACEHOLDER = "<N>"


def round_up_125(x: float) -> float:
    """The smallest value of the 1-2-5 series (…, 0.1, 0.2, 0.5, 1, 2, 5, …) that is >= x."""
    if not x > 0:
        return 0.0
    exponent = math.floor(math.log10(x))
    for mantissa in (1, 2, 5, 10):
        step = float(f"{mantissa}e{exponent}")
        if step >= x * (1 - 1e-9):
            return step
    return float(f"1e{exponent + 1}")


def derive_tolerance(category: str, cpu_drift: float) -> float:
    """tolerance = max(floor, SAFETY x largest drift across emulated CPUs), 1-2-5 rounded up."""
    floor = IMAGE_FLOOR if category == "image" else FLOORS[category]
    return round_up_125(max(floor, SAFETY * cpu_drift))


@dataclass(frozen=True)
class Tolerance:
    """|fresh - committed| may be at most max(abs, rel x |committed|)."""

    abs: float = 0.0
    rel: float = 0.0
    label: str = ""

    def allowed(self, committed: float) -> float:
        return max(self.abs, self.rel * abs(committed))

    def describe(self) -> str:
        if self.abs and self.rel:
            text = f"max({self.abs:g}, {self.rel:.2%} of |committed|)"
        elif self.rel:
            text = f"{self.rel:.2%} relative"
        else:
            text = f"{self.abs:g}"
        return f"{text} ({self.label})" if self.label else text


@dataclass(frozen=True)
class Contract:
    """Tolerances per metric category and for TF figures, and where they came from."""

    tolerances: dict
    image_tolerance: float
    source: str
    measured: bool = True

    @property
    def printed(self) -> Tolerance:
        """The printed-number tolerance for tf-derived notebook cells: the loosest category
        (a printed number may be any metric, and the text does not say which)."""
        chosen = [self.tolerances[n] for n in PRINTED_DEFAULT]
        return Tolerance(max(t.abs for t in chosen), max(t.rel for t in chosen),
                         "printed numbers: loosest metric category")

    def for_cell(self, cell) -> Tolerance:
        """The tolerance of a tf-derived cell: a cell tagged `tolerance:loss` (or
        `tolerance:r2,std`, ...) prints only those categories and gets their loosest one;
        any other tf-derived cell gets `printed`."""
        tags = ((cell.get("metadata") or {}).get("tags") or []) if cell else []
        names = [n for t in tags if t.startswith(TOLERANCE_TAG)
                 for n in t[len(TOLERANCE_TAG):].split(",")]
        unknown = sorted(set(names) - set(self.tolerances))
        if unknown:
            raise ValueError(f"cell tag {TOLERANCE_TAG}{','.join(names)}: unknown categories "
                             f"{unknown}; known: {', '.join(self.tolerances)}")
        if not names:
            return self.printed
        chosen = [self.tolerances[n] for n in names]
        return Tolerance(max(t.abs for t in chosen), max(t.rel for t in chosen),
                         f"printed numbers: {', '.join(names)}")


def load_contract(path: Path | str = DRIFT_FILE) -> Contract:
    """The contract's tolerances, derived from the measured drift in reports/drift.json, or
    from DEFAULT_CPU_DRIFT (documented defaults) when that file is missing."""
    path = Path(path)
    if path.is_file():
        drift = json.loads(path.read_text(encoding="utf-8"))
        cpu = {name: float(entry["cpu_max"]) for name, entry in drift["categories"].items()}
        image = float(drift.get("image", {}).get("cpu_max", DEFAULT_IMAGE_DRIFT))
        source, measured = f"measured ({path.name})", True
    else:
        cpu, image = dict(DEFAULT_CPU_DRIFT), DEFAULT_IMAGE_DRIFT
        source, measured = f"defaults ({path.name} missing: run scripts/measure_drift.py)", False
    tolerances = {}
    for name, (relative, _) in CATEGORIES.items():
        value = derive_tolerance(name, cpu.get(name, DEFAULT_CPU_DRIFT[name]))
        tolerances[name] = Tolerance(0.0, value, name) if relative else Tolerance(value, 0.0,
                                                                                  name)
    return Contract(tolerances, derive_tolerance("image", image), source, measured)


# ------------------------------------------------------------------------------------------
# Metrics files
# ------------------------------------------------------------------------------------------


def _notebook_number(name: str) -> str:
    return Path(str(name)).name[:2]


def is_exact_model(model) -> bool:
    """A scikit-learn model name (EXACT_MODELS or a name starting with EXACT_MODEL_PREFIXES)."""
    text = str(model).strip().casefold()
    return text in EXACT_MODELS or text.startswith(EXACT_MODEL_PREFIXES)


def _normalize(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(key).casefold().replace("²", "2")).strip("_")


def metric_category(key: str) -> str | None:
    """The metric category of a key name, RANK for rank*, None for non-metrics (exact).

    r2-type: r2, r2_mean, mean_r2, split0_r2, mean_test_score, split3_test_score, r2_drop;
    std-type: *_std, std_* (checked first: r2_std is a spread); median_factor (relative);
    mse, mae, loss; METRIC_ALIASES for names that say nothing (effect)."""
    norm = _normalize(key)
    tokens = norm.split("_")
    if norm in CONFIG_KEYS:
        return None
    if tokens[0] == "rank" or norm.startswith("rank"):
        return RANK
    if re.fullmatch(r"(split\d+|std)_test_score", norm):
        return "split"
    if norm == "mean_test_score":
        return "grid"
    if "std" in tokens and "median_factor" in norm:
        return "factor_std"
    if "std" in tokens:
        return "std"
    if "median_factor" in norm:
        return "median_factor"
    if "r2" in tokens or "score" in tokens:
        return "r2"
    if "mse" in tokens or "rmse" in tokens:
        return "mse"
    if "mae" in tokens:
        return "mae"
    if any("loss" in t for t in tokens):
        return "loss"
    return METRIC_ALIASES.get(norm)


@dataclass
class Leaf:
    """One compared value of a metrics file."""

    path: str
    committed: object
    fresh: object
    tf: bool  # in a TF-derived row
    category: str | None  # metric category if it gets a tolerance; RANK; None = exact


@dataclass
class Structure:
    """A structural difference (missing/extra keys or rows, row counts, order, types)."""

    path: str
    message: str


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)


def _row_is_tf(row: dict, tf_context: bool) -> bool:
    if "model" in row:
        return not is_exact_model(row["model"])
    return tf_context


def _effective_category(key, value, inherited: str | None) -> str | None:
    """A key's metric category: from its own name; for a float value whose own name says
    nothing (and is no configuration key), from the nearest enclosing key (cv_r2_by_epochs)."""
    own = metric_category(key)
    if inherited and inherited.startswith(FORCED):  # a TABLE_CATEGORIES table
        return inherited[len(FORCED):] if own not in (None, RANK) else own
    if own is not None or str(key) in CONFIG_KEYS:
        return own
    return inherited if isinstance(value, float | str) else None


def _row_label(row: dict, inherited: str | None) -> tuple:
    """Identifying (key, value) pairs of a table row: model/feature_set/knob when present, else
    every scalar that is not a metric (the configuration)."""
    named = [(k, row[k]) for k in ("model", "feature_set", "knob") if k in row]
    if named:
        return tuple(named)
    return tuple((k, v) for k, v in row.items()
                 if isinstance(v, str | int | float | bool) and v is not None
                 and _effective_category(k, v, inherited) is None)


def _label_text(label: tuple) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in label) + "]"


def walk_metrics(committed, fresh, path: str = "", tf: bool = False,
                 inherited: str | None = None, key=None) -> Iterator[Leaf | Structure]:
    """Pair up the values of two metrics payloads: a Leaf for every compared value, a Structure
    for every structural difference. tf: inside a TF-derived row (or TF file top level);
    inherited: metric category of the nearest enclosing key that has one."""
    if isinstance(committed, dict) and isinstance(fresh, dict):
        if "model" in committed:
            tf = _row_is_tf(committed, tf) or ("model" in fresh and _row_is_tf(fresh, tf))
        missing = [k for k in committed if k not in fresh]
        extra = [k for k in fresh if k not in committed]
        if missing or extra:
            parts = ([f"missing keys {missing}"] if missing else []) + (
                [f"extra keys {extra}"] if extra else [])
            yield Structure(path or "(top level)", "; ".join(parts))
        elif list(committed) != list(fresh):
            yield Structure(path or "(top level)", f"key order differs: committed "
                                                   f"{list(committed)}, fresh {list(fresh)}")
        for k in committed:
            if k in fresh:
                child = f"{path}.{k}" if path else str(k)
                forced = inherited and inherited.startswith(FORCED)
                category = (FORCED + TABLE_CATEGORIES[k] if k in TABLE_CATEGORIES else inherited
                            if forced else metric_category(k) or inherited)
                yield from walk_metrics(committed[k], fresh[k], child, tf, category, k)
        return
    if isinstance(committed, list) and isinstance(fresh, list):
        yield from _walk_list(committed, fresh, path, tf, inherited, key)
        return
    if isinstance(committed, dict | list) or isinstance(fresh, dict | list) or (
            type(committed) is not type(fresh) and not (_is_number(committed)
                                                        and _is_number(fresh))):
        yield Structure(path, f"type differs: committed {_fmt(committed)}, fresh {_fmt(fresh)}")
        return
    category = _effective_category(key, committed, inherited) if tf and key is not None else None
    yield Leaf(path, committed, fresh, tf, category)


def _walk_list(committed: list, fresh: list, path: str, tf: bool, inherited: str | None,
               key) -> Iterator[Leaf | Structure]:
    rows = committed and fresh and all(isinstance(r, dict) for r in [*committed, *fresh])
    if rows:
        tf_c = [_row_is_tf(r, tf) for r in committed]
        tf_f = [_row_is_tf(r, tf) for r in fresh]
        labels_c = [_row_label(r, inherited) for r in committed]
        labels_f = [_row_label(r, inherited) for r in fresh]
        if len(set(labels_c)) == len(labels_c) and len(set(labels_f)) == len(labels_f):
            index_f = {label: i for i, label in enumerate(labels_f)}
            set_c = set(labels_c)
            for label in labels_c:
                if label not in index_f:
                    yield Structure(f"{path}{_label_text(label)}", "row missing in fresh")
            for label in labels_f:
                if label not in set_c:
                    yield Structure(f"{path}{_label_text(label)}", "extra row in fresh")
            if len(committed) != len(fresh):
                yield Structure(path, f"row count differs: committed {len(committed)}, "
                                      f"fresh {len(fresh)}")
            exact_c = [lb for lb, t in zip(labels_c, tf_c) if not t and lb in index_f]
            exact_f = [lb for lb, t in zip(labels_f, tf_f) if not t and lb in set_c]
            if exact_c != exact_f:
                yield Structure(path, "order of exact (scikit-learn) rows differs: committed "
                                      f"{[_label_text(x) for x in exact_c]}, fresh "
                                      f"{[_label_text(x) for x in exact_f]}")
            for label, row in zip(labels_c, committed):
                if label in index_f:
                    yield from walk_metrics(row, fresh[index_f[label]],
                                            f"{path}{_label_text(label)}", tf, inherited, key)
            return
    if len(committed) != len(fresh):
        yield Structure(path, f"length differs: committed {len(committed)}, "
                              f"fresh {len(fresh)}")
    for i, (a, b) in enumerate(zip(committed, fresh)):
        yield from walk_metrics(a, b, f"{path}[{i}]", tf, inherited, key)


def metric_leaves(name: str, committed: dict, fresh: dict) -> Iterator[Leaf | Structure]:
    """walk_metrics with the file-level rules: files of EXACT_NOTEBOOKS are exact throughout;
    the top level (and rows without `model`) of TF_NOTEBOOKS files are TF-derived."""
    number = _notebook_number(name)
    exact_file = number in EXACT_NOTEBOOKS
    for item in walk_metrics(committed, fresh, "", number in TF_NOTEBOOKS and not exact_file):
        if exact_file and isinstance(item, Leaf):
            item.tf, item.category = False, None
        yield item


def leaf_deviation(leaf: Leaf) -> float | None:
    """|fresh - committed| of a numeric leaf (relative for median_factor), None otherwise."""
    a, b = leaf.committed, leaf.fresh
    if not (_is_number(a) and _is_number(b)):
        return None
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if leaf.category and CATEGORIES.get(leaf.category, (False,))[0]:
        return abs(b - a) / abs(a) if a else (0.0 if b == a else math.inf)
    return abs(b - a)


def compare_metrics(name: str, committed: dict, fresh: dict,
                    contract: Contract | None = None) -> list[str]:
    """One message per difference between a committed and a freshly written metrics payload.

    name: the file name (06_results.json); decides whether rows without `model` are exact.
    Messages name the file, the key path, both values, the difference and the tolerance."""
    contract = contract or load_contract()
    messages = []
    for item in metric_leaves(name, committed, fresh):
        if isinstance(item, Structure):
            messages.append(f"{name}: {item.path}: {item.message}")
            continue
        leaf = item
        if leaf.category == RANK:
            continue  # follows from the scores, which are compared
        if leaf.category is None:
            if leaf.committed != leaf.fresh or type(leaf.committed) is not type(leaf.fresh):
                diff = ""
                if _is_number(leaf.committed) and _is_number(leaf.fresh):
                    diff = f", difference {leaf.fresh - leaf.committed:+.3g}"
                messages.append(f"{name}: {leaf.path}: committed {_fmt(leaf.committed)}, "
                                f"fresh {_fmt(leaf.fresh)}{diff}, tolerance exact")
            continue
        tol = contract.tolerances[leaf.category]
        if isinstance(leaf.committed, str) and isinstance(leaf.fresh, str):
            for text in compare_text_numbers(leaf.committed, leaf.fresh, tol):
                messages.append(f"{name}: {leaf.path}: {text}")
            continue
        if leaf.committed is None or leaf.fresh is None:
            if leaf.committed is not leaf.fresh:
                messages.append(f"{name}: {leaf.path}: committed {_fmt(leaf.committed)}, "
                                f"fresh {_fmt(leaf.fresh)}, tolerance exact for null")
            continue
        deviation = leaf_deviation(leaf)
        if deviation is None:  # not two numbers (e.g. booleans): exact
            if leaf.committed != leaf.fresh:
                messages.append(f"{name}: {leaf.path}: committed {_fmt(leaf.committed)}, "
                                f"fresh {_fmt(leaf.fresh)}, tolerance exact")
            continue
        allowed = tol.rel if tol.rel else tol.abs
        if deviation > allowed * (1 + 1e-9):
            relative = bool(tol.rel)
            diff = (f"{(leaf.fresh - leaf.committed) / leaf.committed:+.3%} relative"
                    if relative and leaf.committed else
                    f"{leaf.fresh - leaf.committed:+.6g}")
            messages.append(f"{name}: {leaf.path}: committed {_fmt(leaf.committed)}, "
                            f"fresh {_fmt(leaf.fresh)}, difference {diff}, "
                            f"tolerance {tol.describe()}")
    return messages


# ------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------

# figure stem -> "exact" (made from scikit-learn results only) / "tf" (shows TF results).
# Figures not listed are exact.
FIGURE_KINDS = {
    "cv_scores": "tf",  # 06_results: every model's CV scores, the MLPs included
    "actual_vs_predicted": "tf",  # 06_results: includes the tuned MLP
    "importance": "tf",  # 06_results: permutation importance of the tuned MLP (and hgb)
}


def figure_kind(name: str) -> str:
    return FIGURE_KINDS.get(Path(str(name)).stem, "exact")


def _as_file(image, folder: Path, name: str) -> Path:
    target = folder / name
    if isinstance(image, bytes | bytearray):
        target.write_bytes(image)
    else:
        shutil.copyfile(image, target)
    return target


def _png_size(path: Path) -> tuple:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def image_rms(committed_png, fresh_png) -> float:
    """RMS pixel difference (0-255 scale) as matplotlib's compare_images computes it;
    inf when the sizes differ."""
    from matplotlib.testing.compare import compare_images

    with tempfile.TemporaryDirectory() as tmp:
        expected = _as_file(committed_png, Path(tmp), "expected.png")
        actual = _as_file(fresh_png, Path(tmp), "actual.png")
        if _png_size(expected) != _png_size(actual):
            return math.inf
        result = compare_images(str(expected), str(actual), tol=-1, in_decorator=True)
        return 0.0 if result is None else float(result["rms"])


def compare_figure(committed_png, fresh_png, name: str, contract: Contract | None = None,
                   diff_dir: Path | None = None) -> str | None:
    """None if the fresh figure matches the committed one within its tolerance (exact for
    scikit-learn-only figures, the measured image tolerance for TF figures), else a message.
    Images may be paths or PNG bytes. With diff_dir, a failing figure's difference image is
    kept there as <name>-diff.png."""
    from matplotlib.testing.compare import compare_images
    from matplotlib.testing.exceptions import ImageComparisonFailure

    contract = contract or load_contract()
    kind = figure_kind(name)
    tol = 0.0 if kind == "exact" else contract.image_tolerance
    what = ("exact: figure of scikit-learn results" if kind == "exact"
            else f"TF figure, measured image tolerance ({contract.source})")
    with tempfile.TemporaryDirectory() as tmp:
        expected = _as_file(committed_png, Path(tmp), "expected.png")
        actual = _as_file(fresh_png, Path(tmp), "actual.png")
        if expected.read_bytes() == actual.read_bytes():
            return None
        try:
            size_c, size_f = _png_size(expected), _png_size(actual)
        except Exception as exc:  # not a readable PNG
            return f"{name}: cannot read image ({exc})"
        if size_c != size_f:
            return (f"{name}: image size changed: committed {size_c[0]}x{size_c[1]} px, "
                    f"fresh {size_f[0]}x{size_f[1]} px ({what})")
        try:
            result = compare_images(str(expected), str(actual), tol=tol, in_decorator=True)
        except ImageComparisonFailure as exc:
            return f"{name}: images cannot be compared: {exc} ({what})"
        if result is None:
            return None
        kept = ""
        if diff_dir is not None:
            diff_dir = Path(diff_dir)
            diff_dir.mkdir(parents=True, exist_ok=True)
            target = diff_dir / f"{Path(str(name)).stem}-diff.png"
            shutil.copyfile(result["diff"], target)
            kept = f"; difference image: {target}"
        return (f"{name}: images differ: RMS {result['rms']:.3f} > tolerance {tol:g} "
                f"({what}){kept}")


# ------------------------------------------------------------------------------------------
# Numbers in text (notebook cell outputs, formatted strings in metrics files)
# ------------------------------------------------------------------------------------------

# A number not inside an identifier (r2, log10, AVX2, split0) or after a decimal point:
# optional sign (also U+2212 minus), digits with optional thousands separators, decimals,
# exponent, percent sign.
NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>[+\-\u2212]?)"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"
    r"(?:\.(?P<frac>[0-9]+))?"
    r"(?:[eE](?P<exp>[+\-\u2212]?[0-9]+))?"
    r"(?P<pct>%)?"
    r"(?![0-9A-Za-z_])"
)


@dataclass(frozen=True)
class PrintedNumber:
    text: str
    value: float
    unit: float  # one unit of the last printed digit, in the same scale as value


def parse_number(match: re.Match) -> PrintedNumber:
    sign = -1.0 if match["sign"] in ("-", "\u2212") else 1.0
    frac = match["frac"] or ""
    value = float(match["int"].replace(",", "") + ("." + frac if frac else ""))
    unit = 10.0 ** -len(frac)
    if match["exp"]:
        scale = 10.0 ** int(match["exp"].replace("\u2212", "-"))
        value, unit = value * scale, unit * scale
    if match["pct"]:
        value, unit = value / 100, unit / 100
    return PrintedNumber(match.group(0), sign * value, unit)


def split_numbers(text: str) -> tuple[str, list[PrintedNumber]]:
    """The text with every number replaced by NUMBER_PLACEHOLDER (a percent sign kept), and
    the numbers in order."""
    numbers = []

    def replace(match):
        numbers.append(parse_number(match))
        return NUMBER_PLACEHOLDER + ("%" if match["pct"] else "")

    return NUMBER_RE.sub(replace, text), numbers


def mask_numbers(text: str) -> str:
    return split_numbers(text)[0]


def _clip(line: str, width: int = 160) -> str:
    line = line.strip()
    return line if len(line) <= width else line[: width - 1] + "…"


def compare_text_numbers(committed: str, fresh: str, tolerance: Tolerance | float | None,
                         limit: int = 20) -> list[str]:
    """Messages for two texts that must match except for numbers within tolerance (None:
    exact). Each number may differ by max(abs, rel x |committed|) plus one unit of the
    committed number's last printed digit (0.3494 and 0.3506 print as 0.349 and 0.351)."""
    if committed == fresh:
        return []
    if isinstance(tolerance, int | float):
        tolerance = Tolerance(float(tolerance))
    lines_c, lines_f = committed.split("\n"), fresh.split("\n")
    if tolerance is None:
        for i, (a, b) in enumerate(zip(lines_c, lines_f), start=1):
            if a != b:
                return [f"line {i} differs (exact):\n    committed: {_clip(a)}\n"
                        f"    fresh:     {_clip(b)}"]
        return [f"line count differs: committed {len(lines_c)}, fresh {len(lines_f)} (exact)"]
    template_c, _ = split_numbers(committed)
    template_f, _ = split_numbers(fresh)
    if template_c != template_f:
        t_c, t_f = template_c.split("\n"), template_f.split("\n")
        for i, (a, b) in enumerate(zip(t_c, t_f), start=1):
            if a != b:
                return [f"text differs, not only in its numbers, at line {i}:\n"
                        f"    committed: {_clip(lines_c[i - 1])}\n"
                        f"    fresh:     {_clip(lines_f[i - 1])}"]
        return [f"line count differs: committed {len(t_c)}, fresh {len(t_f)}"]
    messages = []
    for i, (a, b) in enumerate(zip(lines_c, lines_f), start=1):
        if a == b:
            continue
        _, nums_a = split_numbers(a)
        _, nums_b = split_numbers(b)
        for na, nb in zip(nums_a, nums_b):
            allowed = tolerance.allowed(na.value) + na.unit
            diff = nb.value - na.value
            if abs(diff) > allowed * (1 + 1e-9):
                messages.append(
                    f"line {i}: committed {na.text}, fresh {nb.text}: difference {diff:+.4g} > "
                    f"tolerance {allowed:.4g} (= {tolerance.describe()} + {na.unit:g} for the "
                    f"last printed digit)\n    committed: {_clip(a)}\n    fresh:     {_clip(b)}")
    if len(messages) > limit:
        messages = messages[:limit] + [f"... and {len(messages) - limit} more numbers"]
    return messages


# ------------------------------------------------------------------------------------------
# Notebook cell outputs
# ------------------------------------------------------------------------------------------

TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")
_CR = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)
_BS = re.compile("[^\n]\x08")  # a character erased by a backspace


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _clean_stream(text: str) -> str:
    """Apply backspaces and carriage returns as a terminal would (as nbval does)."""
    old = None
    while old != text:
        old, text = text, _BS.sub("", text)
    return _CR.sub("", text)


def output_texts(outputs, sanitize: Callable[[str], str] | None = None) -> dict:
    """The comparable texts of a cell's outputs: {"stream stdout": [text], "text/html": [...],
    "error": [...]}. Streams of one name are joined (like nbval); images are not included."""
    sanitize = sanitize or (lambda s: s)
    keyed, streams = {}, {}
    for out in outputs or []:
        kind = out.get("output_type")
        if kind == "stream":
            key = f"stream {out.get('name', 'stdout')}"
            if key not in streams:
                keyed[key] = []
                streams[key] = ""
            streams[key] += _text(out.get("text", ""))
        elif kind in ("display_data", "execute_result"):
            for mime, value in (out.get("data") or {}).items():
                if mime in TEXT_MIMES:
                    keyed.setdefault(mime, []).append(sanitize(_text(value)))
        elif kind == "error":
            keyed.setdefault("error", []).append(sanitize(f"{out.get('ename')}: "
                                                          f"{out.get('evalue')}"))
    for key, text in streams.items():
        keyed[key] = [sanitize(_clean_stream(text))]
    return keyed


def compare_cell_outputs(committed_outputs, fresh_outputs, tolerance: Tolerance | float | None,
                         sanitize: Callable[[str], str] | None = None,
                         where: str = "cell") -> list[str]:
    """Messages for the differences between a cell's committed and fresh outputs (text/plain,
    text/html, markdown, streams, errors). The texts with numbers replaced by a placeholder
    must match exactly; the numbers pairwise within tolerance plus one unit of the committed
    number's last printed digit. tolerance None: exact. sanitize: applied to both sides first
    (nbval's sanitizers)."""
    texts_c = output_texts(committed_outputs, sanitize)
    texts_f = output_texts(fresh_outputs, sanitize)
    messages = []
    if set(texts_c) != set(texts_f):
        missing, extra = sorted(set(texts_c) - set(texts_f)), sorted(set(texts_f) - set(texts_c))
        messages.append(f"{where}: output kinds differ: missing {missing}, extra {extra}")
    for key, values_c in texts_c.items():
        values_f = texts_f.get(key)
        if values_f is None:
            continue
        if len(values_c) != len(values_f):
            messages.append(f"{where}: {key}: committed has {len(values_c)} outputs, "
                            f"fresh has {len(values_f)}")
            continue
        for n, (a, b) in enumerate(zip(values_c, values_f), start=1):
            label = key if len(values_c) == 1 else f"{key} #{n}"
            for text in compare_text_numbers(a, b, tolerance):
                messages.append(f"{where}: {label}: {text}")
    return messages


def mask_outputs(outputs, sanitize: Callable[[str], str] | None = None) -> list:
    """Deep copies of notebook outputs with every number in their texts (after sanitize)
    replaced by NUMBER_PLACEHOLDER: for nbval's own exact comparison of everything else."""
    sanitize = sanitize or (lambda s: s)
    masked = []
    for out in outputs or []:
        out = copy.deepcopy(out)
        if out.get("output_type") == "stream":
            out["text"] = mask_numbers(sanitize(_clean_stream(_text(out.get("text", "")))))
        for mime in TEXT_MIMES:
            if mime in (out.get("data") or {}):
                out["data"][mime] = mask_numbers(sanitize(_text(out["data"][mime])))
        masked.append(out)
    return masked


def is_tf_cell(cell) -> bool:
    """A notebook cell tagged `tf-derived` in its metadata."""
    return TF_TAG in ((cell.get("metadata") or {}).get("tags") or [])


def sanitizer_from_file(path: Path | str) -> Callable[[str], str]:
    """The nbval sanitizers of a config file (regex:/replace: pairs) as one function,
    parsed exactly as nbval parses them."""
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns(Path(path).read_text(encoding="utf-8"))

    def sanitize(text: str) -> str:
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    return sanitize


@dataclass
class NotebookComparison:
    messages: list = field(default_factory=list)
    tf_cells: int = 0
    exact_cells: int = 0


def compare_notebooks(committed_nb, fresh_nb, contract: Contract | None = None,
                      sanitize: Callable[[str], str] | None = None,
                      name: str = "notebook") -> NotebookComparison:
    """Compare every code cell's outputs as the test session does: cells tagged tf-derived
    with the printed-number tolerance, all others exactly (text outputs, after sanitize).
    Papermill's injected-parameters cell is skipped; cells are numbered like nbval
    (`Cell N` = N-th code cell of the committed notebook)."""
    contract = contract or load_contract()

    def code_cells(nb):
        return [c for c in nb["cells"] if c.get("cell_type") == "code"
                and "injected-parameters" not in ((c.get("metadata") or {}).get("tags") or [])]

    cells_c, cells_f = code_cells(committed_nb), code_cells(fresh_nb)
    result = NotebookComparison()
    if len(cells_c) != len(cells_f):
        result.messages.append(f"{name}: code cell count differs: committed {len(cells_c)}, "
                               f"fresh {len(cells_f)}")
    for number, (a, b) in enumerate(zip(cells_c, cells_f)):
        tf = is_tf_cell(a)
        result.tf_cells += tf
        result.exact_cells += not tf
        where = f"{name} Cell {number}" + (" (tf-derived)" if tf else "")
        result.messages += compare_cell_outputs(a.get("outputs"), b.get("outputs"),
                                                contract.for_cell(a) if tf else None,
                                                sanitize, where)
    return result
