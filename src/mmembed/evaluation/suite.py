"""Run a list of benchmark configs against one embedder; write results.json and results.md."""

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

from mmembed.evaluation.report import results_markdown

log = logging.getLogger(__name__)


def _tasks():
    from mmembed.evaluation.tasks_caption import run_captioning
    from mmembed.evaluation.tasks_cir import run_cirr, run_fashioniq
    from mmembed.evaluation.tasks_image import run_retrieval, run_zeroshot
    from mmembed.evaluation.tasks_mmeb import run_mmeb
    from mmembed.evaluation.tasks_regions import run_regions
    from mmembed.evaluation.tasks_text import run_sts

    return {"sts": run_sts, "retrieval": run_retrieval, "cirr": run_cirr, "fashioniq": run_fashioniq,
            "zeroshot": run_zeroshot, "mmeb": run_mmeb, "captioning": run_captioning,
            "regions": run_regions}


def _readers():
    from mmembed.evaluation.tasks_caption import read_captioning_benchmark
    from mmembed.evaluation.tasks_cir import read_cirr_benchmark, read_fashioniq_benchmarks
    from mmembed.evaluation.tasks_image import read_caption_benchmark, read_zeroshot_benchmark
    from mmembed.evaluation.tasks_mmeb import read_mmeb_benchmark
    from mmembed.evaluation.tasks_regions import read_region_benchmark
    from mmembed.evaluation.tasks_text import read_sts

    return {"sts": read_sts, "retrieval": read_caption_benchmark, "cirr": read_cirr_benchmark,
            "fashioniq": read_fashioniq_benchmarks, "zeroshot": read_zeroshot_benchmark, "mmeb": read_mmeb_benchmark,
            "captioning": read_captioning_benchmark, "regions": read_region_benchmark}


def check_benchmarks(benchmarks: Sequence[Mapping]) -> None:
    """Read every benchmark's annotations and check its files exist, before any model is loaded:
    a missing folder fails in seconds with `BenchmarkLayoutError`, not after an hour of embedding."""
    names = [b.get("name") or b.get("task") for b in benchmarks]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be unique, got {names}")
    readers = _readers()
    for name, cfg in zip(names, benchmarks):
        if cfg.get("task") not in readers:
            raise ValueError(f"benchmark {name!r}: unknown task {cfg.get('task')!r}; known: {sorted(readers)}")
        readers[cfg["task"]](dict(cfg, name=name))


def evaluate_suite(
    embedder,
    benchmarks: Sequence[Mapping],
    out_dir: str | Path,
    batch_size: int = 16,
    model: str | None = None,
    adapter: str | None = None,
    progress: bool = True,
    extra: Mapping | None = None,
) -> dict:
    """Evaluate every benchmark config (a mapping with `name`, `task` and the task's settings).

    Returns (and writes to `out_dir`) {"model", "adapter", ..., "benchmarks": {name: {"metrics",
    "protocol", "wall_time_s"}}}. results.json is rewritten after each benchmark, so a long run that
    stops early keeps what it finished.
    """
    tasks = _tasks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_benchmarks(benchmarks)
    names = [b.get("name") or b.get("task") for b in benchmarks]
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
    for name, cfg in zip(names, benchmarks):
        t0 = time.perf_counter()
        log.info("evaluating %s (%s)", name, cfg["task"])
        entry = tasks[cfg["task"]](embedder, dict(cfg, name=name), batch_size=batch_size, progress=progress)
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
