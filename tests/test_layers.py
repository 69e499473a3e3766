"""Packages import only downward: every ``import`` in ``src/aligngpt`` (inside functions too) names a package of a
lower layer, or its own package. The layers are the table of docs/architecture.md, which these tests hold to them."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "aligngpt"
ARCHITECTURE = REPO / "docs" / "architecture.md"
ROOT = "aligngpt"  # the package's own __init__.py: ``aligngpt.load`` hands over to inference

# Low to high. A module may import its own package and the packages of lower layers, never a sibling of its layer.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names)
    for names in (
        {"errors", "prompts", "choices"},
        {"registration", "model_files", "commands", "fileio"},
        {"config"},
        {"modeling"},
        {"processing"},
        {"data", "convert"},
        {"scoring", "training", "inference", "toyworld"},
        {ROOT},
        {"evaluation"},
        {"demo"},
        {"cli"},
    )
)
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


@dataclass(frozen=True)
class Import:
    """``source`` (a file, as the package it belongs to) imports ``target`` (a top-level package) at ``line``."""

    path: str
    line: int
    source: str
    target: str
    statement: str


def top_level_names(package: Path = PACKAGE) -> set[str]:
    """The modules and sub-packages directly under the package, plus its own ``__init__``."""
    names = {path.stem for path in package.glob("*.py") if path.name != "__init__.py"}
    names |= {path.name for path in package.iterdir() if (path / "__init__.py").is_file()}
    return names | {ROOT}


def owner(module: tuple[str, ...] | list[str], names: set[str]) -> str:
    """The top-level package a module of ``aligngpt`` belongs to (``("aligngpt", "data", "records")`` -> data);
    ``aligngpt`` itself, or a name the root's ``__init__`` defines, belongs to the root."""
    return module[1] if len(module) > 1 and module[1] in names else ROOT


def imports_of(source: str, module: tuple[str, ...], is_package: bool, names: set[str], path: str) -> list[Import]:
    """Every import of an ``aligngpt`` package other than the module's own, with the statement's line."""
    own = owner(module, names)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                base = list(module if is_package else module[:-1])
                base = base[: len(base) - (node.level - 1)]
                stem = base + (node.module.split(".") if node.module else [])
            else:
                stem = node.module.split(".")
            # ``from aligngpt import data`` names a package; ``from aligngpt import load`` the root's own name
            targets = [stem + [alias.name] for alias in node.names] if stem == [ROOT] else [stem]
        else:
            continue
        for target in targets:
            if target[0] != ROOT:
                continue
            name = owner(target, names)
            if name != own:
                found.append(Import(path, node.lineno, own, name, ast.get_source_segment(source, node) or ""))
    return found


def package_imports(package: Path = PACKAGE) -> list[Import]:
    names = top_level_names(package)
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        is_package = path.name == "__init__.py"
        module = parts[:-1] if is_package else parts
        found += imports_of(path.read_text(), module, is_package, names, str(path.relative_to(REPO)))
    return found


def violations(found: list[Import]) -> list[str]:
    """Imports of a package in the same layer or a higher one."""
    return [
        f"{i.path}:{i.line}: {i.source} (layer {LAYER_OF[i.source]}) imports {i.target} (layer {LAYER_OF[i.target]})"
        f": {i.statement}"
        for i in found
        if LAYER_OF[i.target] >= LAYER_OF[i.source]
    ]


def test_every_package_has_a_layer():
    names = top_level_names()
    assert not names - LAYER_OF.keys(), f"place these in LAYERS and docs/architecture.md: {names - LAYER_OF.keys()}"
    assert not LAYER_OF.keys() - names, f"LAYERS names what src/aligngpt lacks: {LAYER_OF.keys() - names}"


def test_packages_import_only_lower_layers():
    found = package_imports()
    assert len(found) > 100  # the scan reads the code (imports inside functions included)
    assert any(i.source == "demo" and i.target == "evaluation" for i in found)
    bad = violations(found)
    assert not bad, "imports that run back up a layer:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("def f():\n    from aligngpt.evaluation.runner import run_evaluation\n", "evaluation"),
        ("import aligngpt.demo.pipeline\n", "demo"),
        ("from aligngpt import training\n", "training"),
        ("from aligngpt import load\n", ROOT),
        ("from ...scoring import run\n", "scoring"),
        ("from ... import inference\n", "inference"),
    ],
)
def test_an_import_that_runs_back_up_is_caught(source, target):
    # a module of the toy world's zoo: aligngpt/toyworld/zoo/build.py
    names = top_level_names()
    found = imports_of(source, ("aligngpt", "toyworld", "zoo", "build"), False, names, "build.py")
    assert [(i.source, i.target) for i in found] == [("toyworld", target)]
    assert violations(found) and violations(found)[0].startswith("build.py:")


def test_own_package_and_lower_layers_pass():
    names = top_level_names()
    source = "from aligngpt.toyworld.world import Scene\nfrom aligngpt.fileio import read_jsonl\nfrom . import text\n"
    found = imports_of(source, ("aligngpt", "toyworld", "dataset"), False, names, "dataset.py")
    assert [i.target for i in found] == ["fileio"] and not violations(found)


def test_the_architecture_page_shows_these_layers():
    rows = re.findall(r"^\| (\d+) \| ((?:`[\w.]+`(?:, )?)+) \|", ARCHITECTURE.read_text(), re.M)
    documented = {int(rank): frozenset(re.findall(r"`([\w.]+)`", cells)) for rank, cells in rows}
    assert documented == dict(enumerate(LAYERS))


def _resolves(dotted: str) -> bool:
    """Whether ``aligngpt.x.y`` names a module, or a name that a module defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:cut]))
        except ModuleNotFoundError:  # a parent is a module, not a package
            continue
        if spec is None:
            continue
        obj = importlib.import_module(".".join(parts[:cut]))
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("page", ["architecture.md", "toyworld.md"])
def test_the_layout_docs_name_modules_that_exist(page):
    names = set(re.findall(r"`(?:python -m )?(aligngpt(?:\.\w+)+)", (REPO / "docs" / page).read_text()))
    assert names  # the page names modules
    missing = sorted(name for name in names if not _resolves(name))
    assert not missing, f"docs/{page} names what the code lacks: {missing}"
