"""A/B measurements on a shared machine: arms run alternately (A B B A A B ...) so drift in the load hits both alike,
and are compared by their medians (perf/validation_overhead.py, perf/target_dedup.py)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable


def alternating(first: str, second: str, repeats: int) -> list[str]:
    """first, second, second, first, first, second, ...: each arm as often first as second."""
    pairs = [(first, second) if i % 2 == 0 else (second, first) for i in range(repeats)]
    return [arm for pair in pairs for arm in pair]


def run_alternating(first: str, second: str, repeats: int, run: Callable[[str], dict]) -> list[dict]:
    """`run(arm)` for each arm in alternating order; each result is printed as it comes (a long run shows progress)."""
    runs = []
    for arm in alternating(first, second, repeats):
        runs.append(run(arm))
        print(json.dumps(runs[-1]), flush=True)
    return runs


def medians(runs: list[dict], key: str) -> dict[str, float]:
    """{arm: median of `key` over that arm's runs}, arms in first-seen order."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    return {arm: statistics.median(r[key] for r in runs if r["arm"] == arm) for arm in arms}
