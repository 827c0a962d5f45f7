"""What an adapter folder needs besides its weights, so it loads from Python by its folder alone.

Training writes `mmembed_model.json` beside the adapter: the base model it was trained on, the model
extension with its settings (MM-GEM's [EMB] token, heads and pooling grid) and the pooler, each as a
`{"_target_": "mmembed....", ...settings}` record. `Embedder.from_pretrained(base, adapter=folder)` (and every
other loader, through the model factory) rebuilds what the caller did not give explicitly, so an MM-GEM
adapter no longer needs `model=mmgem prompt=mmgem` to load. Prompts travel in mmembed_prompts.json and the
base-adapter chain in base_adapter/, as before.

Records name classes by import path: only `mmembed.` targets are built (a folder never runs other code).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)

RECORD_FILE = "mmembed_model.json"


def save_model_record(record: Mapping, folder: str | Path) -> Path:
    path = Path(folder) / RECORD_FILE
    path.write_text(json.dumps(dict(record), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def saved_model_record(folder: str | Path | None) -> dict | None:
    path = Path(folder) / RECORD_FILE if folder else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def build_target(record: Mapping):
    """`{"_target_": "mmembed.pkg.Class", **kwargs}` -> Class(**kwargs), for mmembed classes only."""
    target = str(record.get("_target_", ""))
    module_name, _, name = target.rpartition(".")
    if not target.startswith("mmembed.") or not module_name:
        raise ConfigError(f"{RECORD_FILE} names {target!r}: only mmembed classes are rebuilt from a saved record")
    kwargs = {k: v for k, v in record.items() if not k.startswith("_")}
    return getattr(importlib.import_module(module_name), name)(**kwargs)


def fill_from_record(spec) -> None:
    """Set `spec.extension` / `spec.pooler` from the adapter's record where the caller left them unset."""
    record = saved_model_record(spec.adapter)
    if record is None:
        return
    if record.get("base") and str(record["base"]) != str(spec.name_or_path):
        log.warning("adapter %s was trained on %s; loading it on %s", spec.adapter, record["base"], spec.name_or_path)
    if spec.extension is None and record.get("extension"):
        spec.extension = build_target(record["extension"])
        log.info("model extension %s from the adapter's %s", record["extension"]["_target_"], RECORD_FILE)
    if spec.pooler is None and record.get("pooler"):
        spec.pooler = build_target(record["pooler"])
