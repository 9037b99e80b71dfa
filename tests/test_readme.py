"""README.md and docs/*.md: generated blocks current (a stale one caught), links that exist."""

import re
import shutil

import pytest

from spotify_streams.commands import update_readme
from spotify_streams.config import ROOT, SAMPLE_DATA
from spotify_streams.dataset import load_raw


def test_generated_blocks_are_current():
    assert update_readme.blocks().keys() == update_readme.BLOCKS.keys(), \
        "a report in reports/ or a page in docs/ is missing"
    assert update_readme.main(["--check"]) == 0, "stale: run `make readme` and commit"


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the pages that update_readme rewrites (it only reads reports/)."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    monkeypatch.setattr(update_readme, "ROOT", tmp_path)
    monkeypatch.setattr(update_readme, "README", tmp_path / "README.md")
    return tmp_path


@pytest.mark.parametrize("name", list(update_readme.BLOCKS))
def test_a_stale_block_fails_the_check_and_make_readme_repairs_it(tree, name, capsys):
    path = tree / (page := update_readme.BLOCKS[name][0])
    current = path.read_text(encoding="utf-8")
    path.write_text(stale := re.sub(rf"(<!-- {name}:start -->\n)", r"\1| hand-edited | 0.999 |\n",
                                    current), encoding="utf-8")
    assert stale != current and update_readme.main(["--check"]) == 1
    assert page in capsys.readouterr().out and path.read_text(encoding="utf-8") == stale
    assert update_readme.main([]) == 0 and path.read_text(encoding="utf-8") == current


def test_markers_missing_or_left_behind_and_an_absent_page_are_named(tree, capsys):
    readme = tree / "README.md"
    text = readme.read_text(encoding="utf-8")
    for edited, message in [
            (text.replace("<!-- results:start -->\n", ""), "README.md has no <!-- results:start"),
            (text + "\n<!-- performance:start -->\n<!-- performance:end -->\n",
             "block 'performance', which is generated into docs/performance.md")]:
        readme.write_text(edited, encoding="utf-8")
        with pytest.raises(SystemExit, match=message):
            update_readme.main(["--check"])
    readme.write_text(text, encoding="utf-8")
    (tree / "docs" / "performance.md").unlink()
    assert "performance" not in update_readme.blocks() and update_readme.main(["--check"]) == 0
    assert "block performance skipped: docs/performance.md does not exist" in \
        capsys.readouterr().out


def relative_links(path) -> list[str]:
    """The targets of a page's markdown links to files of the repository."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    return [link for link in dict.fromkeys(links) if not re.match(r"[a-z][\w+.-]*:", link)]


@pytest.mark.parametrize("page, link", [(page.relative_to(ROOT).as_posix(), link) for page in
                                        update_readme.pages() for link in relative_links(page)])
def test_linked_files_exist(page, link):
    assert ((ROOT / page).parent / link).exists(), f"{page} links to {link}, which is missing"


def test_prediction_example_reads_a_file_that_is_not_utf8(tmp_path, monkeypatch):
    """The README's predict_streams example as written, on a non-UTF-8 file without streams."""
    import helpers

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S)
                   if "predict_streams(" in block)
    frame = load_raw(SAMPLE_DATA).drop(columns="streams")
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
