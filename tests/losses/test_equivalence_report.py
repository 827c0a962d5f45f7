"""perf/equivalence_tolerances.py reports the observed differences of the tests' own computations."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "equivalence_tolerances.py"


def test_single_process_grad_cache_rows_are_within_the_tests_tolerance():
    spec = importlib.util.spec_from_file_location("equivalence_tolerances", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        rows = module.grad_cache_single_process()
    finally:
        sys.modules.pop(spec.name, None)
    assert [name.split(":")[0] for name, _ in rows] == [f"GradCache chunk {c} vs plain (dropout 0.1)" for c in (1, 1, 3, 3, 8, 8)]
    assert all(0 <= value < 1e-10 for _, value in rows)
