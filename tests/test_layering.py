"""The import graph goes down the floors of DESIGN.md, never up: every `import` in src/mmembed (function-local
ones included) is read from the syntax tree and checked against the floor of the importing package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmembed"

# Top floor first. A package may import its own floor and any floor below it; the most specific prefix wins.
FLOORS = [
    ["run"],
    ["prep"],
    ["lit"],
    ["evaluation"],
    ["baselines"],
    ["inference"],
    ["objectives"],
    ["data"],
    ["models.mmgem"],
    ["models"],
    ["models.smol_llava"],
    ["losses", "metrics"],
    ["errors", "hardware"],
]
# Packages that must stay plain PyTorch / transformers code, usable from a notebook.
NO_FRAMEWORK = ("models", "objectives", "losses", "data", "metrics", "baselines")
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")


def floor_of(module: str) -> int:
    """The floor of `mmembed.<module>` (dotted, without the `mmembed.` prefix): its longest listed prefix."""
    best, best_len = None, -1
    for level, names in enumerate(FLOORS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = level, len(name)
    if best is None:
        raise AssertionError(f"mmembed.{module} sits on no floor: add its package to FLOORS")
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path):
    """(line, imported dotted name) for every import of the file, at any depth of the tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from mmembed.data import teacher_cache` imports a module too
                yield node.lineno, f"{node.module}.{alias.name}"


def _files():
    return [p for p in sorted(SRC.rglob("*.py")) if p != SRC / "__init__.py"]


def violations() -> list[str]:
    out = []
    for path in _files():
        here = module_name(path)
        if not here:
            continue
        mine, seen = floor_of(here), set()
        for line, name in imports(path):
            if name.split(".")[0] in FRAMEWORKS and here.split(".")[0] in NO_FRAMEWORK:
                out.append(f"{path.relative_to(SRC.parent)}:{line} imports {name} (no Lightning/Hydra below lit/)")
            if not name.startswith("mmembed.") or name == "mmembed":
                continue
            target = name[len("mmembed."):]
            try:
                theirs = floor_of(target)
            except AssertionError:
                continue  # `from pkg import Name` of a class, not a module: the module itself was checked
            if theirs < mine and line not in seen:
                seen.add(line)
                out.append(f"{path.relative_to(SRC.parent)}:{line} (floor {FLOORS[mine]}) imports mmembed.{target} "
                           f"(floor {FLOORS[theirs]}, above it)")
    return out


def test_no_import_runs_against_the_layering():
    assert violations() == []


def test_the_checker_sees_an_upward_function_local_import(tmp_path, monkeypatch):
    """A function-local import of a higher floor is found (the check is not vacuous)."""
    pkg = tmp_path / "mmembed"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "losses" / "bad.py").write_text("def f():\n    from mmembed.run.training import run_training\n")
    (pkg / "losses" / "fine.py").write_text("from mmembed.errors import ConfigError\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", pkg)
    found = violations()
    assert len(found) == 1 and "bad.py:2" in found[0] and "mmembed.run.training" in found[0]


@pytest.mark.parametrize("module,level", [("run.training", 0), ("models.smol_llava.modeling", 10),
                                          ("models.factory", 9), ("models.mmgem.extension", 8)])
def test_floors_pick_the_longest_prefix(module, level):
    assert floor_of(module) == level
