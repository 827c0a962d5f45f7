"""Evaluating a saved LoRA adapter: merged and unmerged give the same embeddings, different from the base."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def _cfg(model_dir, adapter, merge):
    from mmembed.models.prompts import PromptConfig

    prompt = {k: getattr(PromptConfig(), k) for k in PromptConfig.__dataclass_fields__}
    return OmegaConf.create({
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "text_only": False, "trust_remote_code": False,
                  "attn_implementation": "sdpa", "padding_side": "left", "cache_dir": None},
        "prompt": prompt, "adapter": str(adapter) if adapter else None, "merge_adapter": merge,
        "lora": {"enabled": False},
    })


def test_adapter_changes_embeddings_same_merged_or_not(tiny_smol_llava_dir, tmp_path):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.lora import apply_lora
    from tests.pipeline.helpers import build_embedder

    peft_model = apply_lora(load_backbone(str(tiny_smol_llava_dir)).model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained-looking adapter (B starts at zero)
    peft_model.save_pretrained(tmp_path / "adapter")

    texts = ["A man is playing a guitar.", "Stocks fell."]
    base = build_embedder(_cfg(tiny_smol_llava_dir, None, True)).eval().encode_text(texts)
    merged_emb = build_embedder(_cfg(tiny_smol_llava_dir, tmp_path / "adapter", True))
    unmerged_emb = build_embedder(_cfg(tiny_smol_llava_dir, tmp_path / "adapter", False))
    with torch.no_grad():
        merged = merged_emb.eval().encode_text(texts)
        unmerged = unmerged_emb.eval().encode_text(texts)
    assert not torch.allclose(base, merged, atol=1e-3)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    # the unmerged PeftModel still exposes the decoder body through Backbone.body (unwrap)
    assert type(unmerged_emb.backbone.body).__name__ != "PeftModel"
