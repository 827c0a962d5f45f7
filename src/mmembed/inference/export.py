"""Fold a LoRA adapter into its base model and save a standalone model folder.

The folder (model + processor + the prompt config in `mmembed_prompts.json`) loads with
`Embedder.from_pretrained(folder)` or `load_backbone(folder)` with no adapter and no access to the
base model, and gives the same embeddings as base + adapter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from mmembed.inference.embedder import resolve_prompts
from mmembed.models.prompts import save_prompts
from mmembed.models.backbones import DEFAULT_MODEL, load_backbone
from mmembed.models.prompts import PromptConfig

log = logging.getLogger(__name__)
EXPORT_FILE = "mmembed_export.json"


def export_merged(
    out_dir: str | Path,
    adapter: str | Path | None,
    model: str | Path = DEFAULT_MODEL,
    dtype: str = "float32",
    prompts: PromptConfig | Mapping | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Merge `adapter` into `model` and `save_pretrained` the result (and its processor) to `out_dir`.

    adapter=None exports the base model as is (a self-contained copy, e.g. of "default").
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)")
    backbone = load_backbone(str(model), dtype=dtype, trust_remote_code=trust_remote_code)
    merged = backbone.model
    if adapter is not None:
        from mmembed.models.lora import load_adapter

        merged = load_adapter(merged, adapter, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    backbone.processor.save_pretrained(out)
    save_prompts(resolve_prompts(prompts, adapter, backbone.name_or_path), out)
    provenance = {"base_model": str(model), "base_path": backbone.name_or_path, "dtype": dtype,
                  "adapter": str(Path(adapter).resolve()) if adapter is not None else None}
    (out / EXPORT_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("exported %s + %s to %s", model, adapter, out)
    return out
