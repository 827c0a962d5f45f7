"""Fold a LoRA adapter into its base model and save a standalone model folder.

The folder (model + processor + the prompt config in `mmembed_prompts.json`) loads with
`Embedder.from_pretrained(folder)` or `load_backbone(folder)` with no adapter and no access to the
base model, and gives the same embeddings as base + adapter. Every export carries a README.md model card
(model_card.py); `push_to_hub` uploads a folder. The sentence-transformers format is st_export.py.
"""

from __future__ import annotations

import json
import logging
import os
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


class HubUnreachableError(MMEmbedError, ConnectionError):
    """No model hub to upload to (offline mode, or the connection failed)."""


def export_merged(
    out_dir: str | Path,
    adapter: str | Path | None,
    model: str | Path = DEFAULT_MODEL,
    dtype: str = "float32",
    prompts: PromptConfig | Mapping | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    model_card: bool = True,
) -> Path:
    """Merge `adapter` into `model` and `save_pretrained` the result (and its processor) to `out_dir`.

    adapter=None exports the base model as is (a self-contained copy, e.g. of "default"). model_card writes
    README.md (from the training run around the adapter, if any); `matryoshka_dims` in mmembed_export.json
    records the nested sizes of a run trained with objective=matryoshka.
    """
    from mmembed.inference.model_card import write_model_card
    from mmembed.inference.run_records import matryoshka_dims, run_config, run_folder

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
                  "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
                  "matryoshka_dims": matryoshka_dims(run_config(run_folder(adapter)))}
    (out / EXPORT_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    if model_card:
        write_model_card(out, adapter)
    log.info("exported %s + %s to %s", model, adapter, out)
    return out


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hub repo `repo_id` (created if missing); returns the repo URL.
    Offline (HF_HUB_OFFLINE) or unreachable: HubUnreachableError, one line, before or instead of a traceback."""
    from huggingface_hub import HfApi

    check_hub_online(repo_id, folder)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="mmembed export")
    except (OSError, ConnectionError) as err:  # requests/httpx connection errors derive from these
        raise HubUnreachableError(f"cannot push to {repo_id}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                                  ) from err
    log.info("pushed %s to %s", folder, url)
    return str(url)


def check_hub_online(repo_id: str, folder: str | Path | None = None) -> None:
    """HubUnreachableError when offline mode is on (HF_HUB_OFFLINE), before any work or network call."""
    from huggingface_hub import constants

    # read now as well as at import: a caller may set the variable after huggingface_hub was imported
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        where = f"; the export is in {folder}: push it from a machine with access" if folder else ""
        raise HubUnreachableError(f"cannot push to {repo_id}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)"
                                  + where)
