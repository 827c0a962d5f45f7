"""Run a list of benchmarks against one embedder; write results.json and results.md."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import resource
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from mmembed.errors import ConfigError
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.report import results_markdown

log = logging.getLogger(__name__)


def check_benchmarks(benchmarks: Sequence[Benchmark]) -> None:
    """Read every benchmark's annotations and check its files exist, before any model is loaded:
    a missing folder fails in seconds with `BenchmarkLayoutError`, not after an hour of embedding."""
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be unique, got {names}")
    for benchmark in benchmarks:
        benchmark.check()


def check_embedder(embedder, benchmarks: Sequence[Benchmark]) -> None:
    """Refuse, in one line, an embedder that cannot encode what a benchmark needs (mmembed.models.encoder)."""
    for benchmark in benchmarks:
        missing = benchmark.missing(embedder)
        if missing:
            raise ConfigError(f"benchmark {benchmark.name!r} ({benchmark.task}) needs an embedder that encodes "
                              f"{sorted(missing)}; {type(embedder).__name__} does not")


def evaluate_suite(
    embedder,
    benchmarks: Sequence[Benchmark],
    out_dir: str | Path,
    batch_size: int = 16,
    model: str | None = None,
    adapter: str | None = None,
    progress: bool = True,
    extra: Mapping | None = None,
) -> dict:
    """Evaluate every benchmark (an `evaluation.benchmarks.base.Benchmark`: built from conf/benchmark/ by the
    run layer, or in Python).

    Returns (and writes to `out_dir`) {"model", "adapter", ..., "benchmarks": {name: {"metrics",
    "protocol", "wall_time_s"}}}. results.json is rewritten after each benchmark, so a long run that
    stops early keeps what it finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_benchmarks(benchmarks)
    check_embedder(embedder, benchmarks)
    results = {
        "model": model,
        "adapter": adapter,
        "prompt_config": dataclasses.asdict(embedder.renderer.config) if getattr(embedder, "renderer", None) else None,
        "batch_size": batch_size,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        **(dict(extra) if extra else {}),
        "benchmarks": {},
    }
    start = time.perf_counter()
    for benchmark in benchmarks:
        name, t0 = benchmark.name, time.perf_counter()
        log.info("evaluating %s (%s)", name, benchmark.task)
        entry = benchmark.run(embedder, batch_size=batch_size, progress=progress)
        entry["wall_time_s"] = round(time.perf_counter() - t0, 2)
        # The process' peak resident memory so far (model, embeddings, score chunks), in MiB.
        entry["peak_rss_mb_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        results["benchmarks"][name] = entry
        results["wall_time_s"] = round(time.perf_counter() - start, 2)
        _write(results, out_dir)
        log.info("%s: %s (%.1f s)", name, entry["metrics"], entry["wall_time_s"])
    results["wall_time_s"] = round(time.perf_counter() - start, 2)
    _write(results, out_dir)
    return results


def _write(results: dict, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(results_markdown(results), encoding="utf-8")
