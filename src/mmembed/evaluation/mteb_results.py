"""An evaluation's STS scores as MTEB result files, written and read back with mteb's own classes.

    <folder>/results/<model name as path>/<revision>/<MTEB task>.json + model_meta.json (+ run_settings.jsonl)
    <folder>/results/<...>/<revision>/experiments/truncate_dim_<d>/...     (a truncate_dim run)

which is `mteb.ResultCache(<folder>)`'s layout: `ResultCache(folder).load_results(...)` or
`TaskResult.from_disk(path)` read them. Only the local STS benchmarks that stand for an MTEB task are written
(STS-B test -> STSBenchmark, STS12-16 -> STS12..STS16, SICK-R -> SICK-R), main_score = cosine_spearman on
MTEB's 0-1 scale (mmembed reports Spearman x 100).

Honesty about the data: the scores come from the local files (SentEval's lowercased, tokenised copies; the
SICK test part only), not from MTEB's dataset, so `dataset_revision` is `local-sha256:<first 16 hex digits
of the file(s)>`, never MTEB's revision, and every score entry carries `mmembed_local_data`: the source, its
pair count and what MTEB's own dataset (path@revision) is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from mmembed.errors import MMEmbedError

try:
    from mteb import get_task
    from mteb.cache import ResultCache
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.results import TaskResult
except ImportError as err:  # the message says what to install, not a bare traceback
    raise MMEmbedError(f"mteb_results=true needs the mteb package (pip install mteb): {err}") from err

STS_YEARS = ("STS12", "STS13", "STS14", "STS15", "STS16")


def mteb_task_name(benchmark) -> str | None:
    """The MTEB task a local benchmark stands for (None: none does, e.g. STS-B dev or a retrieval set)."""
    fmt = getattr(benchmark, "format", None)
    if getattr(benchmark, "task", None) != "sts":
        return None
    if fmt == "stsb":
        return "STSBenchmark" if (benchmark.split or "test") == "test" else None  # MTEB evaluates test only
    if fmt == "sick":
        return "SICK-R" if (benchmark.split or "TEST").upper() == "TEST" else None
    if fmt == "sts12_16":
        year = Path(str(benchmark.path)).name.split("-")[0].upper()
        return year if year in STS_YEARS else None
    return None


def local_revision(source: str | Path) -> str:
    """`local-sha256:<16 hex>` of the file, or of a folder's files (sorted by name): what was evaluated."""
    path, digest = Path(source), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return f"local-sha256:{digest.hexdigest()[:16]}"


def model_meta(model: str, adapter: str | None, embed_dim: int, truncate_dim: int | None = None,
               modalities: tuple[str, ...] = ("text",), n_parameters: int | None = None,
               revision: str | None = None) -> ModelMeta:
    """What the results describe. name "mmembed/<model folder or id>[+<adapter run>]"; revision: the given one,
    else the adapter weights' sha256 (first 12), else mteb's "no_revision_available"; a truncate_dim run is an
    MTEB experiment (experiment_kwargs), so its files sit apart from the full-size ones."""
    name = f"mmembed/{Path(model).name}"
    adapter_file = Path(adapter) / "adapter_model.safetensors" if adapter else None
    if adapter:
        name += f"+{_adapter_label(Path(adapter))}"
        if revision is None and adapter_file.is_file():
            revision = "adapter-" + hashlib.sha256(adapter_file.read_bytes()).hexdigest()[:12]
    return ModelMeta.create_empty(overwrites={
        "name": name, "revision": revision, "embed_dim": embed_dim, "n_parameters": n_parameters,
        "similarity_fn_name": ScoringFunction.COSINE,  # vectors are L2-normalised
        "modalities": list(modalities), "framework": ["PyTorch"], "use_instructions": True,  # E5-V-style prompts
        "adapted_from": model if adapter else None,
        "experiment_kwargs": {"truncate_dim": truncate_dim} if truncate_dim else None,
    })


def _adapter_label(adapter: Path) -> str:
    """`<run folder>-<adapter name>` of `<run>/adapters/<name>`, else the folder's own name."""
    parts = adapter.resolve().parts
    return f"{parts[-3]}-{parts[-1]}" if len(parts) >= 3 and parts[-2] == "adapters" else adapter.name


def task_result(task_name: str, entry: Mapping, when: datetime | None = None) -> TaskResult:
    """One local STS benchmark's results entry ({"metrics": {"spearman": x100}, "protocol", "wall_time_s"})
    as an MTEB TaskResult of `task_name`."""
    task = get_task(task_name)
    meta, protocol = task.metadata, entry["protocol"]
    spearman = float(entry["metrics"]["spearman"]) / 100
    split = meta.eval_splits[0]
    note = {
        "source": protocol["source"], "setting": protocol.get("setting"), "pairs": protocol.get("pairs"),
        "score": "Spearman of cosine similarity vs gold over the local pairs (pooled over sub-files)",
        "mteb_dataset": f"{meta.dataset['path']}@{meta.dataset['revision']}",
        "differs_from_mteb_dataset": "not verified identical: computed by mmembed on a local copy "
                                     "(SentEval-processed text; SICK's test part only), not on MTEB's dataset",
    }
    scores = {"main_score": spearman, "cosine_spearman": spearman, "hf_subset": "default",
              "languages": meta.eval_langs if isinstance(meta.eval_langs, list) else ["eng-Latn"],
              "mmembed_local_data": note}
    return TaskResult(
        dataset_revision=local_revision(protocol["source"]), task_name=meta.name,
        mteb_version=_mteb_version(), scores={split: [scores]}, evaluation_time=entry.get("wall_time_s"),
        kg_co2_emissions=None,  # not measured
        date=when or datetime.now(timezone.utc),
    )


def write_mteb_results(results: Mapping, benchmarks, folder: str | Path, meta: ModelMeta) -> list[Path]:
    """Write every benchmark of `results` (evaluate_suite's) that stands for an MTEB task; returns the files."""
    cache, written = ResultCache(folder), []
    by_name = {b.name: b for b in benchmarks}
    for name, entry in results["benchmarks"].items():
        task_name = mteb_task_name(by_name[name]) if name in by_name else None
        if task_name is None:
            continue
        result = task_result(task_name, entry)
        cache.save_to_cache(result, meta)
        written.append(cache.get_task_result_path(task_name, meta))
    return written


def _mteb_version() -> str:
    from importlib.metadata import version

    return version("mteb")
