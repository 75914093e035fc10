"""pyproject.toml says what an install outside this checkout needs, and what `flwr run` reads."""

from __future__ import annotations

import ast
import glob
import importlib
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import fedbatch
from fedbatch.federated.run_config import CONFIG_KEY, OUTPUT_KEY, OVERRIDES_KEY, RESUME_KEY

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE = Path(fedbatch.__file__).resolve().parent


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _imported_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_every_third_party_import_is_declared():
    """Each distribution fedbatch imports is a dependency of its own (or of the extra that
    needs it), not something that happens to come with Flower or Hydra."""
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    distributions = importlib.metadata.packages_distributions()
    imported = set().union(*(_imported_top_level(p) for p in PACKAGE.rglob("*.py")))
    third_party = imported - set(sys.stdlib_module_names) - {"fedbatch", "__future__"}
    missing = {}
    for module in sorted(third_party):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not in pyproject.toml: {missing}"


def test_requires_python_is_flowers():
    ours = SpecifierSet(PYPROJECT["project"]["requires-python"])
    flower = SpecifierSet(importlib.metadata.metadata("flwr")["Requires-Python"])
    for minor in range(8, 16):
        version = f"3.{minor}"
        assert (version in ours) == (version in flower), version


def test_flwr_run_finds_the_apps_and_every_run_config_key():
    """Flower drops a `--run-config` key that pyproject does not declare."""
    app = PYPROJECT["tool"]["flwr"]["app"]
    expected = {CONFIG_KEY: "", OVERRIDES_KEY: "", OUTPUT_KEY: "", RESUME_KEY: False}
    assert app["config"] == expected
    for reference in app["components"].values():
        module, _, attribute = reference.partition(":")
        assert hasattr(importlib.import_module(module), attribute)


def test_no_federations_in_pyproject():
    """Flower 1.42's `flwr run` moves `[tool.flwr.federations]` into
    `$FLWR_HOME/config.toml` and comments it out of pyproject.toml: it would rewrite this
    file on a user's first run. Connections live in the Flower config instead."""
    assert "federations" not in PYPROJECT["tool"]["flwr"]


def test_every_config_is_package_data():
    """The globs as setuptools expands them (recursive `**`) cover every config file."""
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["fedbatch"]
    shipped = {Path(f) for g in globs for f in glob.glob(g, root_dir=PACKAGE, recursive=True)}
    configs = {p.relative_to(PACKAGE) for p in (PACKAGE / "conf").rglob("*.yaml")}
    assert len(configs) > 30 and configs <= shipped
