"""The generated blocks of README.md and docs/*.md match the committed reports, a stale one is
caught, and every file the pages link to exists."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "update_readme.py"
spec = importlib.util.spec_from_file_location("update_readme", SCRIPT)
update_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_readme)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_generated_blocks_are_current():
    generated = update_readme.blocks()
    assert {"results", "runtime", "performance"} <= generated.keys(), \
        "a report in reports/ or a page in docs/ is missing"
    for path in update_readme.pages():
        page = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        assert update_readme.render(text, generated, page) == text, \
            f"{page} is stale: run `make readme` and commit"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the pages and reports that update_readme works on."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "reports", tmp_path / "reports")
    monkeypatch.setattr(update_readme, "ROOT", tmp_path)
    monkeypatch.setattr(update_readme, "README", tmp_path / "README.md")
    return tmp_path


@pytest.mark.parametrize("name", ["results", "runtime", "performance"])
def test_a_stale_block_fails_the_check_and_make_readme_repairs_it(tree, name, capsys):
    page = update_readme.BLOCKS[name][0]
    path = tree / page
    current = path.read_text(encoding="utf-8")
    stale = re.sub(rf"(<!-- {name}:start -->\n)", r"\1| hand-edited | 0.999 |\n", current)
    assert stale != current
    path.write_text(stale, encoding="utf-8")
    assert update_readme.main(["--check"]) == 1
    assert page in capsys.readouterr().out and path.read_text(encoding="utf-8") == stale
    assert update_readme.main([]) == 0
    assert path.read_text(encoding="utf-8") == current


def test_markers_missing_or_left_behind_are_named(tree):
    readme = tree / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("<!-- results:start -->\n", ""), encoding="utf-8")
    with pytest.raises(SystemExit, match="README.md has no <!-- results:start -->"):
        update_readme.main(["--check"])
    readme.write_text(text + "\n<!-- performance:start -->\n<!-- performance:end -->\n",
                      encoding="utf-8")
    with pytest.raises(SystemExit, match="block 'performance', which is generated into "
                                         "docs/performance.md"):
        update_readme.main(["--check"])


def test_a_block_whose_page_is_absent_is_skipped_and_said(tree, capsys):
    (tree / "docs" / "performance.md").unlink()
    assert "performance" not in update_readme.blocks()
    assert update_readme.main(["--check"]) == 0
    assert "block performance skipped: docs/performance.md does not exist" in \
        capsys.readouterr().out


def relative_links(path: Path) -> list[str]:
    """The targets of a page's markdown links to files of the repository."""
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    return [link for link in dict.fromkeys(links) if not re.match(r"[a-z][\w+.-]*:", link)]


@pytest.mark.parametrize("page, link", [(page.relative_to(ROOT).as_posix(), link)
                                        for page in PAGES for link in relative_links(page)])
def test_linked_files_exist(page, link):
    assert ((ROOT / page).parent / link).exists(), f"{page} links to {link}, which is missing"


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
    assert [options for _, options in received] == [
        {"interval": 0.8}, {"inputs": "pre-release", "age_days": 365}]
    assert all(len(rows) == len(frame) and "streams" not in rows for rows, _ in received)
