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
               cpu_mask_dropout: bool = False, **extras):
    """Wrap `model` with fresh LoRA adapters on the language model. Returns the PeftModel.

    `target_modules` is a regex over full module names (peft full-matches a string); None uses
    `default_target_regex`. Everything except the adapters is frozen. `cpu_mask_dropout`: the adapters'
    dropout draws its CPU masks from 16-bit random numbers (mmembed/models/lora_dropout.py). `extras` go to
    peft's LoraConfig (a model extension's `modules_to_save`, `trainable_token_indices`: trained and saved
    with the adapter).
    """
    from peft import LoraConfig, get_peft_model

    regex = target_modules or default_target_regex(model)
    matched = [n for n, m in unwrap(model).named_modules() if isinstance(m, nn.Linear) and re.fullmatch(regex, n)]
    if not matched:
        raise ConfigError(f"lora.target_modules={regex!r} matches no linear layer of this model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none", **extras)
    peft_model = get_peft_model(model, config)
    if cpu_mask_dropout:
        from mmembed.models.lora_dropout import use_cpu_mask_dropout

        use_cpu_mask_dropout(peft_model)
    return peft_model


# An adapter trained on top of another (`adapter=<stage 1>` at training, merged into the base first) is a
# delta from base + that adapter, not from the base: its folder carries a copy of the one below it here,
# so every loader rebuilds base + parent + adapter, and the folder stays valid when moved or shared.
BASE_ADAPTER_DIR = "base_adapter"


def adapter_chain(adapter_dir: str | Path) -> list[Path]:
    """The adapter folders to apply, bottom first: the nested base adapters, then `adapter_dir` itself."""
    chain = [Path(adapter_dir)]
    while (chain[0] / BASE_ADAPTER_DIR / "adapter_config.json").is_file():
        chain.insert(0, chain[0] / BASE_ADAPTER_DIR)
    return chain


def load_adapter(model: nn.Module, adapter_dir: str | Path, merge: bool = False, trainable: bool = False):
    """Attach a saved adapter folder to `model`; with merge=True fold it in and return the plain model.

    The base adapters it was trained on top of (see BASE_ADAPTER_DIR) are merged in first."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterLoadError(
            f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json); pass the folder written by "
            "training, e.g. <run dir>/adapters/last"
        )
    for parent in adapter_chain(adapter_dir)[:-1]:
        model = PeftModel.from_pretrained(model, str(parent)).merge_and_unload()
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    return peft_model.merge_and_unload() if merge else peft_model
