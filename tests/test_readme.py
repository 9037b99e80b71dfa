"""The README's generated tables match the committed reports, and what it links to exists."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "update_readme.py"
spec = importlib.util.spec_from_file_location("update_readme", SCRIPT)
update_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_readme)


def test_results_table_is_current():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    generated = update_readme.blocks()
    assert "results" in generated, "reports/metrics/06_results.json is missing"
    assert update_readme.render(text, generated) == text, \
        "README.md is stale: run `make readme` and commit"


def test_stale_table_is_detected():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tampered = re.sub(r"\| tuned MLP \| [^|]+", "| tuned MLP | 0.999 ± 0.001 ", text)
    assert tampered != text
    assert update_readme.render(tampered, update_readme.blocks()) != tampered


@pytest.mark.parametrize("link", re.findall(r"\]\(((?:reports|notebooks)/[^)]+)\)",
                                            (ROOT / "README.md").read_text(encoding="utf-8")))
def test_linked_files_exist(link):
    assert (ROOT / link).is_file(), link


def test_prediction_example_reads_a_file_that_is_not_utf8(tmp_path, monkeypatch):
    """The README's predict_streams example, run as written on a non-UTF-8 file without
    streams (pd.read_csv raised UnicodeDecodeError on the Kaggle file)."""
    import helpers

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                   if "predict_streams(" in block)
    frame = helpers.load_raw(helpers.SAMPLE_DATA).drop(columns="streams")
    frame.to_csv(tmp_path / "new_songs.csv", index=False, encoding="cp1252", errors="replace")
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "new_songs.csv").read_bytes().decode("utf-8")
    received = []
    monkeypatch.setattr(helpers, "predict_streams",  # no saved model needed
                        lambda rows, **options: received.append((rows, options)))
    monkeypatch.chdir(tmp_path)
    exec(example, {})
    assert [options for _, options in received] == [{}, {"inputs": "pre-release"}]
    assert all(len(rows) == len(frame) and "streams" not in rows for rows, _ in received)
