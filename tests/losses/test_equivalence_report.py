"""perf/equivalence_tolerances.py reports the observed differences of the tests' own computations."""

from __future__ import annotations

import sys

from tests.scripts import load_script


def test_single_process_grad_cache_rows_are_within_the_tests_tolerance():
    try:
        rows = load_script("perf/equivalence_tolerances.py").grad_cache_single_process()
    finally:
        sys.modules.pop("equivalence_tolerances", None)
    assert [name.split(":")[0] for name, _ in rows] == [f"GradCache chunk {c} vs plain (dropout 0.1)" for c in (1, 1, 3, 3, 8, 8)]
    assert all(0 <= value < 1e-10 for _, value in rows)
