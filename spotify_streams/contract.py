"""The reproducibility contract: one rule for all the notebooks write or print (see
docs/reproducibility.md); T: reports/drift.json (make drift)."""

import copy
import functools
import json
import math
import re
import statistics
import tempfile
from collections import namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spotify_streams.config import REPORTS_DIR

DRIFT_FILE = REPORTS_DIR / "drift.json"

# T = the 1-2-5 step at or above SAFETY x the largest drift measured, at least the floor.
SAFETY = 2.5
FLOOR, IMAGE_FLOOR = 1e-3, 0.5

# Configuration tables (file, top-level key): compared exactly, floats included.
CHOICES = {("04_mlp.json", "config"), ("05_grid.json", "tuned"), ("05_grid.json", "tuned_trees"),
           ("06_results.json", "tuned")}


def grid_summary(rows) -> dict:
    """05's grid: per value of each knob, its configurations' mean mean_test_score."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return {}
    score, out = re.compile(r"(mean|std|rank|split\d+)_test_score"), {}
    for knob in [k for k in (rows[0] if rows else {}) if not score.fullmatch(k)]:
        for value in dict.fromkeys(r.get(knob) for r in rows):
            scores = [r.get("mean_test_score") for r in rows if r.get(knob) == value]
            mean = statistics.fmean(scores) if all(_is_number(s) for s in scores) else None
            out[f"{knob}={value}"] = {"configurations": len(scores), "mean_test_score": mean}
    return out


def knob_summary(rows) -> dict:
    """05's knob effects: per knob the difference and verdict; per learning rate the change."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return {}
    return {f"{r.get('learning_rate', 'all')}/{r.get('knob')}": {
        k: r[k] for k in (("change",) if "learning_rate" in r else ("difference", "verdict"))
        if k in r} for r in rows}


# (file, top-level key) -> its stable summary: the table's structure and summary compared.
UNSTABLE = {("05_grid.json", "grid"): grid_summary, ("05_grid.json", "knob_effects"): knob_summary,
            ("05_grid.json", "knob_effects_by_learning_rate"): knob_summary}


def round_up_125(x: float) -> float:
    """The smallest value of the 1-2-5 series (..., 0.1, 0.2, 0.5, 1, 2, 5, ...) >= x."""
    exponent = math.floor(math.log10(x)) if x > 0 else 0
    return next((step for e in (exponent, exponent + 1) for m in (1, 2, 5)
                 if (step := float(f"{m}e{e}")) >= x * (1 - 1e-9)), 0.0) if x > 0 else 0.0


def derive_tolerance(largest_drift: float, floor: float = FLOOR) -> float:
    return round_up_125(max(floor, SAFETY * largest_drift))


@dataclass(frozen=True)
class Contract:
    tolerance: float  # T, for every float
    image_tolerance: float  # RMS, for every figure
    source: str

    def allowed(self, committed: float, unit: float = 0.0) -> float:
        return self.tolerance * max(1.0, abs(committed)) + unit


def load_contract(path: Path | str = DRIFT_FILE) -> Contract:
    drift = json.loads(Path(path).read_text(encoding="utf-8"))
    return Contract(float(drift["tolerance"]), float(drift["image_tolerance"]),
                    f"{Path(path).name}: {drift['source']}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_float_pair(a, b) -> bool:
    """A committed float and a fresh number: compared within T (a committed int is a count)."""
    return isinstance(a, float) and _is_number(b)


def normalized(committed: float, fresh: float) -> float:
    """|fresh - committed| / max(1, |committed|): what T bounds."""
    if math.isnan(committed) or math.isnan(fresh):
        return 0.0 if math.isnan(committed) and math.isnan(fresh) else math.inf
    return abs(fresh - committed) / max(1.0, abs(committed))


# One compared place; kind: float (within T), exact, structure, unstable (not compared raw).
Item = namedtuple("Item", "path committed fresh kind")


def walk(committed, fresh, path: str = "", name: str = "", exact: bool = False,
         unstable: bool = False) -> Iterator[Item]:
    """An Item per compared value and structural difference (name: the metrics file)."""
    if isinstance(committed, dict) and isinstance(fresh, dict):
        if list(committed) != list(fresh):
            yield Item(path or "(top level)", list(committed), list(fresh), "structure")
        for key in [k for k in committed if k in fresh]:
            summary = None if path else UNSTABLE.get((name, key))
            yield from walk(committed[key], fresh[key], f"{path}.{key}" if path else key, name,
                            exact or (not path and (name, key) in CHOICES),
                            unstable or summary is not None)
            if summary:
                yield from walk(summary(committed[key]), summary(fresh[key]),
                                f"{key} (summary: {summary.__name__})")
    elif isinstance(committed, list) and isinstance(fresh, list):
        if len(committed) != len(fresh):
            yield Item(f"{path} (row count)", len(committed), len(fresh), "structure")
        for i, (a, b) in enumerate(zip(committed, fresh)):  # a row: its first 3 texts, or i
            names = [f"{k}={v}" for k, v in a.items() if isinstance(v, str)] \
                if isinstance(a, dict) else []
            yield from walk(a, b, f"{path}[{', '.join(names[:3]) or i}]", name, exact, unstable)
    else:  # one value
        yield Item(path, committed, fresh, "unstable" if unstable else
                   "float" if not exact and is_float_pair(committed, fresh) else "exact")


def _fmt(value) -> str:
    return repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def same(a, b) -> bool:  # exact, NaN equal to NaN
    return type(a) is type(b) and (a == b or (a != a and b != b))


def compare_metrics(name: str, committed, fresh, contract: Contract) -> list[str]:
    """A message per value breaking the rule: file, key path, both values, tolerance or why."""
    messages = []
    for item in walk(committed, fresh, name=name):
        where, c, f = f"{name}: {item.path}", item.committed, item.fresh
        if item.kind == "structure":
            messages.append(f"{where}: structure differs: committed {_fmt(c)}, fresh {_fmt(f)}")
        elif item.kind == "exact" and not same(c, f):
            why = ("a configuration choice, contract.CHOICES" if is_float_pair(c, f) else
                   "type " + " vs ".join(dict.fromkeys(type(x).__name__ for x in (c, f))))
            messages.append(f"{where}: committed {_fmt(c)}, fresh {_fmt(f)}: compared "
                            f"exactly ({why})")
        elif item.kind == "float" and normalized(c, f) > contract.tolerance * (1 + 1e-9):
            messages.append(f"{where}: committed {_fmt(c)}, fresh {_fmt(f)}: difference "
                            f"{f - c:+.3g} > tolerance {contract.allowed(c):.3g} "
                            f"(T = {contract.tolerance:g} x max(1, |committed|))")
    return messages


def image_rms(committed_png, fresh_png, keep_diff: Path | None = None) -> float:
    """RMS pixel difference (0-255, inf for another size); keep_diff: a copy of the diff."""
    from matplotlib.testing.compare import compare_images
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "expected.png", Path(tmp) / "actual.png"]
        for path, image in zip(paths, (committed_png, fresh_png)):  # PNG bytes or a file
            path.write_bytes(image if isinstance(image, bytes | bytearray) else Path(image)
                             .read_bytes())
        if Image.open(paths[0]).size != Image.open(paths[1]).size:
            return math.inf
        result = compare_images(str(paths[0]), str(paths[1]), tol=-1, in_decorator=True)
        if result is None:  # identical pixels
            return 0.0
        if keep_diff is not None:
            Path(keep_diff).parent.mkdir(parents=True, exist_ok=True)
            Path(keep_diff).write_bytes(Path(result["diff"]).read_bytes())
        return float(result["rms"])


def compare_figure(committed_png, fresh_png, name: str, contract: Contract,
                   diff_dir: Path | None = None) -> str | None:
    """None within the image tolerance, else a message (diff_dir keeps <stem>-diff.png)."""
    target = Path(diff_dir) / f"{Path(name).stem}-diff.png" if diff_dir else None
    if target:  # an earlier run's difference image is not this comparison's
        target.unlink(missing_ok=True)
    try:
        rms = image_rms(committed_png, fresh_png, keep_diff=target)
    except Exception as exc:  # not a readable PNG
        return f"{name}: cannot compare images ({exc})"
    what = "image size changed" if rms == math.inf else f"RMS {rms:.3f}"
    return None if rms <= contract.image_tolerance else (
        f"{name}: {what} > image tolerance {contract.image_tolerance:g}"
        + (f"; difference image: {target}" if target and target.is_file() else ""))


# A number not in an identifier (r2, AVX2) or after a point: sign (or U+2212), digits with
# thousands separators, decimals, exponent, percent sign.
NUMBER_RE = re.compile(
    r"(?<![\w.])(?P<sign>[+\-\u2212]?)(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"
    r"(?:\.(?P<frac>[0-9]+))?(?:[eE](?P<exp>[+\-\u2212]?[0-9]+))?(?P<pct>%)?(?![0-9A-Za-z_])")
FLOAT_MARK = "<float>"
Printed = namedtuple("Printed", "text value unit line")  # unit: one unit of the last digit


def split_floats(text: str) -> tuple[str, list[Printed]]:
    """The text with floats made FLOAT_MARK and runs of spaces one; the floats."""
    floats = []

    def replace(match):  # a float: its value, one unit of its last digit, its line
        if not (match["frac"] or match["exp"]):  # a count
            return match.group(0)
        frac, exp = match["frac"] or "", int((match["exp"] or "0").replace("\u2212", "-"))
        scale = 10.0 ** exp / (100 if match["pct"] else 1)
        value = float(match["int"].replace(",", "") + "." + frac) * scale
        sign = -1.0 if match["sign"] in ("-", "\u2212") else 1.0
        line = text.count("\n", 0, match.start()) + 1
        floats.append(Printed(match.group(0), sign * value, 10.0 ** -len(frac) * scale, line))
        return FLOAT_MARK

    return re.sub(r"[ \t]+", " ", NUMBER_RE.sub(replace, text)), floats


def compare_text(committed: str, fresh: str, contract: Contract) -> list[str]:
    """Messages for two printed texts under the rule."""
    (template_c, floats_c), (template_f, floats_f) = split_floats(committed), split_floats(fresh)

    def both(i):  # the two lines, each clipped to 160 characters
        c, f = (x.strip() if len(x.strip()) <= 160 else x.strip()[:159] + "…"
                for x in (committed.split("\n")[i], fresh.split("\n")[i]))
        return f"\n    committed: {c}\n    fresh:     {f}"

    if template_c != template_f:
        t_c, t_f = template_c.split("\n"), template_f.split("\n")
        if len(t_c) != len(t_f):
            return [f"line count differs: committed {len(t_c)}, fresh {len(t_f)}"]
        i = next(i for i, (a, b) in enumerate(zip(t_c, t_f)) if a != b)
        pairs = zip(NUMBER_RE.finditer(t_c[i]), NUMBER_RE.finditer(t_f[i]))
        counts = [(a.group(0), b.group(0)) for a, b in pairs if a.group(0) != b.group(0)]
        what = (f"count {counts[0][0]} -> {counts[0][1]} (a number without a decimal point is "
                "a count, compared exactly)" if counts and
                NUMBER_RE.sub("#", t_c[i]) == NUMBER_RE.sub("#", t_f[i]) else "text differs")
        return [f"line {i + 1}: {what}" + both(i)]
    messages = []
    for a, b in zip(floats_c, floats_f):
        allowed = contract.allowed(a.value, a.unit)
        if abs(b.value - a.value) > allowed * (1 + 1e-9):
            messages.append(
                f"line {a.line}: committed {a.text}, fresh {b.text}: difference "
                f"{b.value - a.value:+.4g} > tolerance {allowed:.4g} (T = "
                f"{contract.tolerance:g} x max(1, |committed|) + {a.unit:g} for the last printed "
                "digit)" + both(a.line - 1))
    return messages


TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")
_CR = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)
_BS = re.compile("[^\n]\x08")  # a character erased by a backspace


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _clean_stream(text: str) -> str:  # backspaces and carriage returns as nbval applies them
    while _BS.search(text):
        text = _BS.sub("", text)
    return _CR.sub("", text)


def output_texts(outputs, sanitize: Callable[[str], str] = str) -> dict:
    """{"stream stdout": [text], "text/html": [...], ...} of a cell's outputs, no images."""
    keyed = {}
    for out in outputs or []:
        kind = out.get("output_type")
        if kind == "stream":  # a stream's pieces as one text
            key = f"stream {out.get('name', 'stdout')}"
            keyed[key] = [keyed.get(key, [""])[0] + _text(out.get("text", ""))]
        elif kind in ("display_data", "execute_result"):
            for mime, value in (out.get("data") or {}).items():
                if mime in TEXT_MIMES:
                    keyed.setdefault(mime, []).append(_text(value))
        elif kind == "error":
            keyed.setdefault("error", []).append(f"{out.get('ename')}: {out.get('evalue')}")
    return {key: [sanitize(_clean_stream(t) if key.startswith("stream ") else t) for t in texts]
            for key, texts in keyed.items()}


def compare_cell_outputs(committed_outputs, fresh_outputs, contract: Contract,
                         sanitize: Callable[[str], str] = str, where: str = "cell") -> list[str]:
    """Messages for a cell's text outputs under the rule (after sanitize, nbval's sanitizers)."""
    texts_c, texts_f = (output_texts(o, sanitize) for o in (committed_outputs, fresh_outputs))
    if set(texts_c) != set(texts_f):
        return [f"{where}: output kinds differ: committed {sorted(texts_c)}, "
                f"fresh {sorted(texts_f)}"]
    messages = []
    for key, values_c in texts_c.items():
        if len(values_c) != len(texts_f[key]):
            messages.append(f"{where}: {key}: committed has {len(values_c)} outputs, fresh "
                            f"{len(texts_f[key])}")
            continue
        for n, (a, b) in enumerate(zip(values_c, texts_f[key]), start=1):
            label = key if len(values_c) == 1 else f"{key} #{n}"
            messages += [f"{where}: {label}: {m}" for m in compare_text(a, b, contract)]
    return messages


def mask_outputs(outputs, sanitize: Callable[[str], str] = str) -> list:
    """Copies of the outputs with printed floats made FLOAT_MARK, for nbval's own comparison."""
    masked = copy.deepcopy(list(outputs or []))
    for out in masked:
        if out.get("output_type") == "stream":
            out["text"] = split_floats(sanitize(_clean_stream(_text(out.get("text", "")))))[0]
        for mime in [m for m in TEXT_MIMES if m in (out.get("data") or {})]:
            out["data"][mime] = split_floats(sanitize(_text(out["data"][mime])))[0]
    return masked


def sanitizer_from_file(path: Path | str) -> Callable[[str], str]:
    """The nbval sanitizers of a config file as one function, parsed as nbval parses them."""
    from nbval.plugin import get_sanitize_patterns

    patterns = get_sanitize_patterns(Path(path).read_text(encoding="utf-8"))
    return lambda text: functools.reduce(lambda t, p: re.sub(p[0], p[1], t), patterns, text)


def compare_notebooks(committed_nb, fresh_nb, contract: Contract,
                      sanitize: Callable[[str], str] = str, name: str = "notebook") -> list[str]:
    """Every code cell's outputs as the test session compares them (`Cell N` as nbval counts)."""
    cells_c, cells_f = ([c for c in nb["cells"] if c.get("cell_type") == "code" and
                         "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
                        for nb in (committed_nb, fresh_nb))
    if len(cells_c) != len(cells_f):
        return [f"{name}: code cell count differs: committed {len(cells_c)}, fresh {len(cells_f)}"]
    messages = []
    for number, (a, b) in enumerate(zip(cells_c, cells_f)):
        if "nbval-ignore-output" not in a.get("metadata", {}).get("tags", []):
            messages += compare_cell_outputs(a.get("outputs"), b.get("outputs"), contract,
                                             sanitize, f"{name} Cell {number}")
    return messages


X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
X86_LEVEL = re.compile(r"X86_V\d")


def simd_extensions() -> dict:
    """numpy's public report of its SIMD dispatch (as np.show_runtime() prints it)."""
    import numpy
    return numpy.show_config(mode="dicts")["SIMD Extensions"]


def numpy_levels(simd: dict) -> list[tuple[str, str]]:
    """[(level, NPY_DISABLE_CPU_FEATURES holding numpy there)] below this CPU's, nearest first."""
    found = list(simd.get("found", []))
    levels = [f for f in [*simd.get("baseline", []), *found] if X86_LEVEL.fullmatch(f)]
    return [(levels[i - 1], " ".join(found[found.index(levels[i]):]))
            for i in range(len(levels) - 1, 0, -1) if levels[i] in found]
