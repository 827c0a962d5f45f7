"""The tokenizer-only fixture is the default model's own tokenizer and processor, not an approximation."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # assembles the real default model once per machine
def test_tokenizer_only_fixture_equals_the_default_models_processor(smol_tokenizer_dir, default_model_dir):
    from transformers import LlavaProcessor

    fast, real = LlavaProcessor.from_pretrained(smol_tokenizer_dir), LlavaProcessor.from_pretrained(default_model_dir)
    texts = ["A man plays a guitar .", "<image>\nSummary above image in one word: ", "Ünïcode ✓ 123"]
    assert fast.tokenizer(texts)["input_ids"] == real.tokenizer(texts)["input_ids"]
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert fast.tokenizer.apply_chat_template(messages, tokenize=False) == real.tokenizer.apply_chat_template(
        messages, tokenize=False)
    assert fast.image_processor.to_dict() == real.image_processor.to_dict()
