"""Tiny random-weight checkpoints built from configs, saved with save_pretrained, for fast tests.

Each builder writes a folder that `mmembed.models.backbones.load_backbone` loads through the same
code path a user's checkpoint takes. Tokenizers are the real SmolLM2 tokenizer (from the
prepared default model), so prompts tokenise as they would for real.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def build_tiny_smol_llava(default_dir: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 64-d SmolLlava with the default model's processor (tokenizer + image processor)."""
    from transformers import LlavaProcessor

    from mmembed.models.smol_llava import SmolLlavaConfig, SmolLlavaForConditionalGeneration

    processor = LlavaProcessor.from_pretrained(default_dir)
    tokenizer = processor.tokenizer
    text_config = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **TINY_TEXT,
    )
    config = SmolLlavaConfig(text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = SmolLlavaForConditionalGeneration(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
