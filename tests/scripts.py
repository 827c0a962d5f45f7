"""Load a repository script (experiments/*.py, perf/*.py, src/*.py: scripts, not packages) as a module for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """The script at REPO/relative_path, executed once per call as module `name` (default: its file stem).

    The module is registered in sys.modules first: dataclasses and pickling resolve classes by module name."""
    path = REPO / relative_path
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
