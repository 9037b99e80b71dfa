"""pyproject.toml's ranges, the lock requirements.txt (`make lock`) and environment.yml agree."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from spotify_streams.config import ROOT


def disagreements(requirements: list[str], pins: dict[str, str]) -> list[str]:
    """Each requirement missing from the lock or whose range excludes its pinned version."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
            found.append(f"{text!r} vs requirements.txt {requirement.name}=={pinned}")
    return found


def test_pyproject_ranges_admit_the_lock_and_environment_yml_installs_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lock = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    lines = [line.split("#", 1)[0].strip() for line in lock]
    assert not [line for line in lines if line and "==" not in line], "only exact pins"
    pins = {canonicalize_name(name): version
            for name, version in (line.split("==", 1) for line in lines if line)}
    assert disagreements(project["dependencies"], pins) == []
    assert disagreements(project["optional-dependencies"]["dev"], pins) == []
    assert {"pytest", "nbval", "ruff", "uv"} <= set(pins)
    assert "tensorflow" not in pins, "tensorflow-cpu (CPU-only build), not tensorflow"
    assert disagreements(["numpy>=2.5,<3", "left-pad>=1"], pins) == [  # the check can fail
        f"'numpy>=2.5,<3' vs requirements.txt numpy=={pins['numpy']}",
        "'left-pad>=1' vs requirements.txt left-pad==None"]
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*- -r requirements\.txt\s*$", text, re.M)
    assert re.search(r"^\s*- python=3\.11\s*$", text, re.M)
    assert "==" not in text, "no copied pins: environment.yml points at the lock"
