"""The conda environments in envs/ are complete for the rules that use them, and pinned like
pyproject.toml; the README's test command is the one CI runs.

Completeness: for every rule, every third-party module that its entry point imports -- at the top
or inside a function, followed transitively through ``workflow_scripts`` -- must come from a
distribution that the rule's env file installs, directly or as a dependency of what it lists.
The dependency closure is read from the installed packages' metadata, so this checks the real
requirement graph of the pinned versions, without building conda environments.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "workflow_scripts"


# ---- pins ------------------------------------------------------------------------------------


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for requirement in requirements:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement).groups()
        pins[canonicalize_name(name)] = version
    return pins


def env_pip_pins(env_file: Path) -> dict[str, str]:
    env = yaml.safe_load(env_file.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {canonicalize_name(r.split("==")[0]): r.split("==")[1] for r in pip_section}


ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def test_every_python_dependency_is_pinned_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert all("==" in r for r in project["dependencies"])


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_pyproject(env_file):
    pins = pyproject_pins()
    listed = env_pip_pins(env_file)
    assert listed, f"{env_file.name} installs no Python packages"
    for name, version in listed.items():
        assert name in pins, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
        assert version == pins[name], f"{env_file.name}: {name}=={version}, pyproject pins {pins[name]}"
    env = yaml.safe_load(env_file.read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python "))
    assert python.replace(" ", "") == "python=3.11"


# ---- which rule runs what, in which env --------------------------------------------------------


def rule_entry_points() -> dict[str, tuple[str, str]]:
    """``rule name -> (env file name, entry-point module)`` for every rule that runs Python."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M)
        for block in blocks:
            header = re.match(r"(?:rule|checkpoint) (\w+):", block)
            module = re.search(r"python -m (workflow_scripts[\w.]*)", block)
            if not header or not module:
                continue
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([\w.-]+\.yaml)"', block)
            assert env, f"{smk.name}: rule {header.group(1)} runs Python but declares no conda env"
            found[header.group(1)] = (env.group(1), module.group(1))
    return found


def test_every_conda_env_is_used_by_a_rule():
    used = {env for env, _ in rule_entry_points().values()}
    assert used == {p.name for p in ENV_FILES}


# ---- imports, followed through the package ----------------------------------------------------


def module_file(name: str) -> Path | None:
    """The source file of ``workflow_scripts...`` module ``name`` (a package's __init__.py)."""
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


@lru_cache(maxsize=None)
def imports_of(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """``(package modules, third-party top-level names)`` that module ``name`` imports anywhere."""
    file = module_file(name)
    tree = ast.parse(file.read_text())
    is_package = file.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    own, third_party = set(), set()

    def note(module: str) -> None:
        if module.split(".")[0] == PACKAGE:
            # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c.
            parts = module.split(".")
            own.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
        elif module.split(".")[0] not in sys.stdlib_module_names and module != "__future__":
            third_party.add(module.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                note(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            note(base)
            for alias in node.names:  # `from pkg import submodule`
                if module_file(f"{base}.{alias.name}"):
                    note(f"{base}.{alias.name}")
    source = file.read_text()
    if "importlib.import_module(f\"{__name__}." in source:
        # A registry that imports its submodules by name (the corpus layouts): all of them can run.
        for sub in file.parent.glob("*.py"):
            if sub.name != "__init__.py":
                note(f"{name}.{sub.stem}")
    return frozenset(own), frozenset(third_party)


def third_party_imports(entry: str) -> dict[str, str]:
    """``top-level name -> importing module`` over everything ``entry`` can import."""
    seen, todo, found = set(), [entry], {}
    parts = entry.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        own, third_party = imports_of(name)
        todo += sorted(own - seen)
        for top in third_party:
            found.setdefault(top, name)
    return found


def data_packages(entry: str) -> dict[str, str]:
    """Packages found at run time by name rather than imported (the Whisper-base weights)."""
    if entry == "workflow_scripts.models.build":
        from workflow_scripts.models.convert import WHISPER_BASE_PACKAGES

        return {package: "workflow_scripts.models.convert" for package in WHISPER_BASE_PACKAGES}
    return {}


# ---- what an env provides -------------------------------------------------------------------


@lru_cache(maxsize=None)
def requirement_closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions ``names`` install, with everything they require (extras not taken)."""
    environment = {**default_environment(), "extra": ""}
    closure, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # listed but not installed here: test_env_pins_match_pyproject covers pins
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return frozenset(closure)


@lru_cache(maxsize=None)
def installed_distributions() -> dict[str, list[str]]:
    """Top-level name -> distributions, over the installed packages. Once per session: reading
    every distribution's file list takes seconds, and each rule's check asks it for many names."""
    return metadata.packages_distributions()


def distributions_of(top_level: str) -> set[str]:
    return {canonicalize_name(d) for d in installed_distributions().get(top_level, [])}


def missing_packages(entry: str, listed: set[str]) -> list[str]:
    """What ``entry`` imports that an env listing the distributions ``listed`` would lack."""
    provided = requirement_closure(frozenset(listed))
    missing = []
    for top_level, importer in sorted({**third_party_imports(entry), **data_packages(entry)}.items()):
        distributions = distributions_of(top_level)
        assert distributions, f"{top_level} (imported by {importer}) is not installed in the test venv"
        if not distributions & provided:
            missing.append(f"{top_level} (distribution {', '.join(sorted(distributions))}, imported by {importer})")
    return missing


@pytest.mark.parametrize("rule", sorted(rule_entry_points()))
def test_rule_environment_provides_every_imported_package(rule):
    env_file, entry = rule_entry_points()[rule]
    missing = missing_packages(entry, set(env_pip_pins(REPO / "envs" / env_file)))
    assert not missing, (
        f"rule {rule} runs {entry} in envs/{env_file}, which does not provide: " + "; ".join(missing)
    )


def test_the_import_walk_sees_function_level_and_transitive_imports():
    # train.run imports peft and transformers inside functions.
    found = third_party_imports("workflow_scripts.train.run")
    assert {"peft", "transformers", "torch", "zarr", "tqdm"} <= set(found)
    # The performance table imports the report's statistics, which import scipy.
    assert third_party_imports("workflow_scripts.report.performance")["scipy"] == "workflow_scripts.report.statistics"
    # The corpus layouts are imported by name; pyarrow comes from the hf_dataset layout.
    assert "pyarrow" in third_party_imports("workflow_scripts.data.manifest")


def test_a_missing_package_is_reported_with_its_importer():
    # The performance table's env without scipy: the gap this test was written for.
    missing = missing_packages("workflow_scripts.report.performance", {"pandas", "pyarrow", "numpy"})
    assert any(m.startswith("scipy (distribution scipy, imported by workflow_scripts.report.statistics)")
               for m in missing)
    # A dependency of a listed package counts: pandas brings numpy.
    assert not any(m.startswith("numpy") for m in missing)


def test_ci_runs_the_readme_test_command():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (REPO / "README.md").read_text()
    assert ci_command in readme
