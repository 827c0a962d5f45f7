"""What a training run and its adapter folders record, read back for model cards and exports: the run folder
around an adapter, its Hydra config, the adapter chain, the Matryoshka sizes it trained and Hub model-index entries
from its eval/results.json."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmembed.models.lora import BASE_ADAPTER_DIR


def run_folder(adapter: str | Path | None) -> Path | None:
    """The training run an adapter came from: <run>/adapters/<name> -> <run> (when it looks like a run)."""
    if adapter is None:
        return None
    adapter = Path(adapter).resolve()
    run = adapter.parent.parent
    if adapter.parent.name == "adapters" and any(
        (run / name).exists() for name in (".hydra/config.yaml", "train_summary.json", "eval/results.json")
    ):
        return run
    return None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_config(run: Path | None) -> dict | None:
    path = run / ".hydra" / "config.yaml" if run else None
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def matryoshka_dims(config: dict | None) -> list[int] | None:
    """The nested sizes a run trained with objective=matryoshka (mmembed.objectives.matryoshka.Matryoshka)."""
    objective = (config or {}).get("objective") or {}
    if str(objective.get("_target_", "")).endswith("Matryoshka") and objective.get("dims"):
        return [int(d) for d in objective["dims"]]
    return None


def adapter_chain(adapter: str | Path | None) -> list[dict]:
    """The adapter and the base adapters merged under it (each saved in the previous one's base_adapter/),
    outermost first: [{"path", "base"}...]."""
    chain, folder = [], Path(adapter) if adapter is not None else None
    while folder is not None and folder.is_dir():
        record = read_json(folder / "mmembed_model.json") or {}
        chain.append({"path": str(folder.resolve()), "base": record.get("base")})
        folder = folder / BASE_ADAPTER_DIR if (folder / BASE_ADAPTER_DIR).is_dir() else None
    return chain


def model_index(results: dict | None, name: str) -> list[dict]:
    """Hub model-index entries: one result per benchmark, its metrics as results.json holds them."""
    entries = []
    for bench, entry in ((results or {}).get("benchmarks") or {}).items():
        task = (entry.get("protocol") or {}).get("task") or "feature-extraction"
        metrics = [{"type": key, "name": key, "value": value} for key, value in (entry.get("metrics") or {}).items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        entries.append({"task": {"type": str(task)}, "dataset": {"name": bench, "type": bench}, "metrics": metrics})
    return [{"name": name, "results": entries}] if entries else []
