"""LoRA: only the language model is adapted; adapters save, load back and merge exactly."""

from __future__ import annotations

import re

import pytest
import torch

from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.lora import apply_lora, default_target_regex, load_adapter


def test_targets_only_language_model_linears(tiny_smol_llava_dir):
    bb = load_backbone(str(tiny_smol_llava_dir))
    regex = default_target_regex(bb.model)
    assert regex.startswith(r"model\.language_model\.layers")
    peft_model = apply_lora(bb.model, r=8, alpha=16, dropout=0.05)
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert lora_modules, "no adapters were created"
    assert all("language_model.layers" in n for n in lora_modules)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in lora_modules)
    # 2 layers x 7 projections
    assert len(lora_modules) == 14
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    cfg = peft_model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16, 0.05)


def test_bad_regex_is_reported(tiny_smol_llava_dir):
    bb = load_backbone(str(tiny_smol_llava_dir))
    with pytest.raises(ValueError, match="matches no linear layer"):
        apply_lora(bb.model, target_modules=r"nothing\.here")


def test_adapter_roundtrip_and_merge(tiny_smol_llava_dir, tmp_path):
    torch.manual_seed(0)
    bb = load_backbone(str(tiny_smol_llava_dir), text_only=True)
    bb.model = apply_lora(bb.model, r=4, alpha=8, dropout=0.0)
    # Make the adapters non-trivial (B starts at zero).
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    texts = ["A man plays a guitar.", "Two dogs run on the beach in the sun."]
    trained = MLLMEmbedder(bb).eval()
    with torch.no_grad():
        expected = trained.encode_text(texts)
    bb.model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    # Adapter-only: far smaller than the base.
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 2_000_000

    for merge in (False, True):
        fresh = load_backbone(str(tiny_smol_llava_dir))
        fresh.model = load_adapter(fresh.model, tmp_path / "adapter", merge=merge)
        with torch.no_grad():
            got = MLLMEmbedder(fresh).eval().encode_text(texts)
        assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999
        assert merge == (not any(re.search("lora_", n) for n, _ in fresh.model.named_parameters()))

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(load_backbone(str(tiny_smol_llava_dir)).model, tmp_path)
