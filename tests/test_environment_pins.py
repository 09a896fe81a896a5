"""The conda environments in envs/ pin the same versions as pyproject.toml, and the README's
test command is the one CI runs."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for requirement in requirements:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement).groups()
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_python_dependency_is_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert all("==" in r for r in project["dependencies"])


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_match_pyproject(env_file):
    env = yaml.safe_load(env_file.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = pyproject_pins()
    assert pip_section, f"{env_file.name} installs no Python packages"
    for requirement in pip_section:
        name, version = requirement.split("==")
        assert name.lower() in pins, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
        assert version == pins[name.lower()], f"{env_file.name}: {name}=={version}, pyproject pins {pins[name.lower()]}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python "))
    assert python.replace(" ", "") == "python=3.11"


def test_every_conda_env_is_used_by_a_rule():
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for env_file in (REPO / "envs").glob("*.yaml"):
        assert f'"../envs/{env_file.name}"' in rules, f"{env_file.name} is used by no rule"


def test_ci_runs_the_readme_test_command():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (REPO / "README.md").read_text()
    assert ci_command in readme
