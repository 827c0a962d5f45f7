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

from mmembed.errors import MMEmbedError
from mmembed.inference.embedder import as_prompt_config
from mmembed.models.backbones import DEFAULT_MODEL
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.prompts import PromptConfig, save_prompts

log = logging.getLogger(__name__)
EXPORT_FILE = "mmembed_export.json"


class ExportTargetError(MMEmbedError, FileExistsError):
    """The export folder already holds files."""


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
        raise ExportTargetError(f"{out} exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)")
    spec = ModelSpec(name_or_path=str(model), dtype=dtype, trust_remote_code=trust_remote_code,
                     adapter=str(adapter) if adapter is not None else None, merge_adapter=True,
                     prompts=as_prompt_config(prompts))
    embedder = build_embedder(spec)  # the adapter is folded into the weights (merge_adapter)
    out.mkdir(parents=True, exist_ok=True)
    embedder.model.save_pretrained(out)
    embedder.featurizer.processor.save_pretrained(out)
    save_prompts(embedder.renderer.config, out)
    backbone = embedder.backbone
    provenance = {"base_model": str(model), "base_path": backbone.name_or_path, "dtype": dtype,
                  "adapter": str(Path(adapter).resolve()) if adapter is not None else None}
    (out / EXPORT_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("exported %s + %s to %s", model, adapter, out)
    return out
