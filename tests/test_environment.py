"""requirements.txt, environment.yml and pyproject.toml must describe the same environment.

requirements.txt has a "direct dependencies" block (between the `---- direct` and
`---- transitive` comment lines) followed by the transitive pins. environment.yml's pip
section lists exactly the direct pins. Every line of requirements.txt is an exact `==` pin.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def normalize(name: str) -> str:
    """PEP 503 name normalization: 'Scikit_Learn' -> 'scikit-learn'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(text: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Return (direct pins, all pins, problems) of a requirements.txt text."""
    direct: dict[str, str] = {}
    pins: dict[str, str] = {}
    problems: list[str] = []
    section = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            if "---- direct" in line:
                section = "direct"
            elif "---- transitive" in line:
                section = "transitive"
            continue
        line = line.split(" #", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            problems.append(f"requirements.txt line {number}: {raw!r} is not an exact "
                            "'name==version' pin")
            continue
        name, version = normalize(match[1]), match[2]
        if name in pins:
            problems.append(f"requirements.txt line {number}: {name} is pinned twice")
        pins[name] = version
        if section == "direct":
            direct[name] = version
        elif section is None:
            problems.append(f"requirements.txt line {number}: pin before the '---- direct' comment")
    if not direct:
        problems.append("requirements.txt: no '---- direct dependencies' block found")
    return direct, pins, problems


def parse_environment(text: str) -> tuple[str | None, dict[str, str], list[str]]:
    """Return (python version, pip pins, problems) of an environment.yml text."""
    data = yaml.safe_load(text) or {}
    python = None
    pins: dict[str, str] = {}
    problems: list[str] = []
    for dep in data.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            for entry in dep["pip"]:
                match = PIN.match(str(entry).strip())
                if not match:
                    problems.append(f"environment.yml pip entry {entry!r} is not an exact '==' pin")
                    continue
                pins[normalize(match[1])] = match[2]
        elif isinstance(dep, str) and re.match(r"^python\s*=", dep):
            python = dep.split("=", 1)[1].strip().lstrip("=")
    if data.get("name") != "spotify-streams":
        problems.append(f"environment.yml: name is {data.get('name')!r}, "
                        "expected 'spotify-streams'")
    if python is None:
        problems.append("environment.yml: no 'python=X.Y' dependency")
    return python, pins, problems


def python_minors(requires_python: str) -> set[str]:
    """The 3.x minor versions a requires-python specifier admits, e.g. {'3.11'}."""
    spec = SpecifierSet(requires_python)
    return {f"3.{minor}" for minor in range(6, 30) if spec.contains(f"3.{minor}.0")}


def check_consistency(requirements: str, environment: str, pyproject: str) -> list[str]:
    """Every disagreement between the three files, as readable messages ([] = consistent)."""
    direct, _, problems = parse_requirements(requirements)
    python, env_pins, env_problems = parse_environment(environment)
    problems += env_problems
    for name, version in direct.items():
        if name not in env_pins:
            problems.append(f"{name}=={version} is a direct pin in requirements.txt "
                            "but missing from environment.yml")
        elif env_pins[name] != version:
            problems.append(f"{name}: requirements.txt pins {version}, "
                            f"environment.yml pins {env_pins[name]}")
    for name, version in env_pins.items():
        if name not in direct:
            problems.append(f"{name}=={version} is in environment.yml "
                            "but not a direct pin in requirements.txt")
    requires = tomllib.loads(pyproject)["project"]["requires-python"]
    if python is not None and python_minors(requires) != {python}:
        problems.append(
            f"environment.yml asks for python={python} "
            f"but pyproject.toml requires-python is {requires!r}"
        )
    return problems


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def complaints(requirements=None, environment=None, pyproject=None) -> list[str]:
    """check_consistency on the repo's files, with any of them replaced by the given text."""
    return check_consistency(
        requirements if requirements is not None else read("requirements.txt"),
        environment if environment is not None else read("environment.yml"),
        pyproject if pyproject is not None else read("pyproject.toml"),
    )


def test_real_files_agree():
    assert complaints() == []


def test_requirements_pin_the_documented_core():
    direct, pins, _ = parse_requirements(read("requirements.txt"))
    core = ["tensorflow-cpu", "keras", "scikit-learn", "pandas", "numpy",
            "papermill", "nbval", "pytest", "ruff"]
    for name in core:
        assert name in direct, f"{name} should be a direct pin"
    assert "tensorflow" not in pins, "use tensorflow-cpu (CPU-only build), not tensorflow"
    assert len(pins) > len(direct), "requirements.txt should also pin the transitive dependencies"


def test_checker_catches_broken_copies(tmp_path):
    """The checker must be able to fail: break each file in a copy and expect a complaint."""
    requirements, environment = read("requirements.txt"), read("environment.yml")
    ruff_line = "      - ruff==0.17.6\n"

    loose = requirements.replace("pandas==3.1.1", "pandas>=3.1")
    assert any("pandas>=3.1" in p and "exact" in p for p in complaints(requirements=loose))

    other = environment.replace("keras==3.15.1", "keras==3.15.0")
    assert any("keras" in p and "3.15.0" in p for p in complaints(environment=other))

    missing = environment.replace(ruff_line, "")
    assert any("ruff" in p and "missing" in p for p in complaints(environment=missing))

    extra = environment.replace(ruff_line, ruff_line + "      - rich==15.0.0\n")
    assert any("rich" in p and "not a direct pin" in p for p in complaints(environment=extra))

    wrong_python = environment.replace("python=3.11", "python=3.12")
    assert any("python=3.12" in p for p in complaints(environment=wrong_python))

    wider = read("pyproject.toml").replace('">=3.11,<3.12"', '">=3.10"')
    assert any("requires-python" in p for p in complaints(pyproject=wider))

    # the same through a file on disk, as a contributor would break it
    broken = tmp_path / "requirements.txt"
    broken.write_text(loose, encoding="utf-8")
    assert complaints(requirements=broken.read_text(encoding="utf-8")) != []


def test_parser_on_small_examples():
    direct, pins, problems = parse_requirements(
        "# ---- direct\nA_b==1.0\n# ---- transitive\nc==2\nd\ne~=1.0\n"
    )
    assert direct == {"a-b": "1.0"} and pins == {"a-b": "1.0", "c": "2"}
    assert len(problems) == 2
    assert python_minors(">=3.11,<3.12") == {"3.11"}
