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


def _randomise_lora(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def test_adapter_trained_on_top_of_another_loads_with_it(tiny_smol_llava_dir, tmp_path):
    """Stage 2 trains a fresh LoRA on base + merged stage-1 adapter: its saved folder must rebuild
    base + stage 1 + stage 2, wherever it is loaded, not base + stage 2."""
    from types import SimpleNamespace

    from mmembed.lit.callbacks import AdapterSaver
    from mmembed.models.lora import adapter_chain

    texts = ["A man plays a guitar.", "Two dogs run on the beach in the sun."]
    stage1 = load_backbone(str(tiny_smol_llava_dir), text_only=True)
    stage1.model = apply_lora(stage1.model, r=4, alpha=8, dropout=0.0)
    _randomise_lora(stage1.model, 1)
    stage1.model.save_pretrained(tmp_path / "stage1")

    stage2 = load_backbone(str(tiny_smol_llava_dir), text_only=True)
    stage2.model = load_adapter(stage2.model, tmp_path / "stage1", merge=True)
    stage2.model = apply_lora(stage2.model, r=4, alpha=8, dropout=0.0)
    _randomise_lora(stage2.model, 2)
    trained = MLLMEmbedder(stage2).eval()
    with torch.no_grad():
        expected = trained.encode_text(texts)
    AdapterSaver(str(tmp_path / "run"), base_adapter=str(tmp_path / "stage1"))._save(
        SimpleNamespace(embedder=trained), "last")
    saved = tmp_path / "run" / "last"
    assert adapter_chain(saved) == [saved / "base_adapter", saved]

    (tmp_path / "stage1").rename(tmp_path / "moved")  # the copy inside the folder is what loads
    for merge in (False, True):
        fresh = load_backbone(str(tiny_smol_llava_dir))
        fresh.model = load_adapter(fresh.model, saved, merge=merge)
        with torch.no_grad():
            got = MLLMEmbedder(fresh).eval().encode_text(texts)
        assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999

    # Without its base adapter the stage-2 delta alone gives another model (what was evaluated before).
    fresh = load_backbone(str(tiny_smol_llava_dir))
    from peft import PeftModel

    fresh.model = PeftModel.from_pretrained(fresh.model, str(saved)).merge_and_unload()
    with torch.no_grad():
        alone = MLLMEmbedder(fresh).eval().encode_text(texts)
    assert torch.nn.functional.cosine_similarity(alone, expected).min() < 0.999
