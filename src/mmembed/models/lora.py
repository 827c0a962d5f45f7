"""LoRA on the language model only (peft), adapter-only saving, loading back and merging."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from mmembed.errors import ConfigError, MMEmbedError
from mmembed.models.backbones import unwrap


class AdapterLoadError(MMEmbedError, FileNotFoundError):
    """The adapter folder is missing or is not a LoRA adapter folder."""

# The decoder's linear layers (Llama / Mistral / Qwen2 naming), as in E5-V's fine-tuning script.
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_path(model: nn.Module) -> str:
    """Module path of the language model's decoder inside `model` (e.g. "model.language_model")."""
    inner = unwrap(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner.model
    for name, module in inner.named_modules():
        if module is decoder:
            return name
    raise ValueError("could not locate the language model's decoder in this model")


def default_target_regex(model: nn.Module) -> str:
    """A regex matching only the decoder's linear layers, never the vision tower or projector."""
    return rf"{re.escape(decoder_path(model))}\.layers\.\d+\..*\.({'|'.join(DECODER_LINEARS)})"


def apply_lora(model: nn.Module, r: int = 64, alpha: int = 16, dropout: float = 0.05, target_modules: str | None = None,
               **extras):
    """Wrap `model` with fresh LoRA adapters on the language model. Returns the PeftModel.

    `target_modules` is a regex over full module names (peft full-matches a string); None uses
    `default_target_regex`. Everything except the adapters is frozen. `extras` go to peft's LoraConfig
    (a model extension's `modules_to_save`, `trainable_token_indices`: trained and saved with the adapter).
    """
    from peft import LoraConfig, get_peft_model

    regex = target_modules or default_target_regex(model)
    matched = [n for n, m in unwrap(model).named_modules() if isinstance(m, nn.Linear) and re.fullmatch(regex, n)]
    if not matched:
        raise ConfigError(f"lora.target_modules={regex!r} matches no linear layer of this model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none", **extras)
    return get_peft_model(model, config)


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = False, trainable: bool = False):
    """Attach a saved adapter folder to `model`; with merge=True fold it in and return the plain model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterLoadError(
            f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json); pass the folder written by "
            "training, e.g. <run dir>/adapters/last"
        )
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    return peft_model.merge_and_unload() if merge else peft_model
