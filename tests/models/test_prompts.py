"""Prompts: exact rendered strings, and training renders what evaluation renders."""

from __future__ import annotations

import pytest

from mmembed.models.prompts import PromptConfig, PromptRenderer, truncate_to_tokens

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def test_raw_templates_are_e5v_strings_exactly():
    r = PromptRenderer(PromptConfig(chat_template=False), tokenizer=None)
    assert r.render("text", "A dog.") == "A dog.\nSummary above sentence in one word: "
    assert r.render("image") == "<image>\nSummary above image in one word: "
    assert r.render("cir_query", "make it red") == (
        '<image>Modify this image with "make it red", desribe modified image in one word:'
    )
    assert r.render("cir_target") == "<image>\n Describe this image in one word:"
    assert r.render("fiq_query", "is darker, has sleeves", category="dress") == (
        "<image> change the style of this dress to is darker, has sleeves\n "
        "Desribe this modified dress in one word based on its style:"
    )
    assert r.render("fiq_target", category="shirt") == "<image>\n Describe this shirt in one word based on its style:"


def test_chat_template_wraps_the_prompt_for_smollm2(tokenizer):
    r = PromptRenderer(PromptConfig(), tokenizer)
    assert r.render("text", "A dog.") == (
        SMOL_SYSTEM + "<|im_start|>user\nA dog.\nSummary above sentence in one word: <|im_end|>\n<|im_start|>assistant\n"
    )
    r2 = PromptRenderer(PromptConfig(system="Embed.", suffix=" \n"), tokenizer)
    assert r2.render("image") == (
        "<|im_start|>system\nEmbed.<|im_end|>\n<|im_start|>user\n<image>\nSummary above image in one word: "
        "<|im_end|>\n<|im_start|>assistant\n \n"
    )


def test_yaml_prompt_config_equals_the_code_defaults():
    from omegaconf import OmegaConf

    from tests.conftest import REPO

    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "prompt" / "e5v.yaml"))
    assert PromptConfig.from_mapping(yaml) == PromptConfig()


def test_default_prompt_group_uses_an_empty_system_turn(tokenizer):
    from omegaconf import OmegaConf

    from tests.pipeline.helpers import compose_train

    cfg = compose_train([], "/tmp/unused")
    prompts = PromptConfig.from_mapping(OmegaConf.to_container(cfg.prompt, resolve=True))
    assert prompts.system == "" and prompts.text == PromptConfig().text
    assert PromptRenderer(prompts, tokenizer).render("text", "A dog.") == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nA dog.\nSummary above sentence in one word: "
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_image_token_is_substituted_per_model():
    r = PromptRenderer(PromptConfig(chat_template=False), None, image_token="<|vision_start|><|image_pad|><|vision_end|>")
    assert r.render("image").startswith("<|vision_start|><|image_pad|><|vision_end|>\nSummary")


def test_bad_prompt_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown prompt settings"):
        PromptConfig.from_mapping({"txt": "x"})
    r = PromptRenderer(PromptConfig(chat_template=False), None, image_token=None)
    with pytest.raises(ValueError, match="no image token"):
        r.render("image")
    with pytest.raises(ValueError, match="needs a text"):
        r.render("text")
    with pytest.raises(ValueError, match="unknown prompt kind"):
        r.render("video")


def test_truncation_happens_before_templating(tokenizer):
    long = " ".join(["word"] * 100)
    (cut,) = truncate_to_tokens([long], tokenizer, 32)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 32
    rendered = PromptRenderer(PromptConfig(), tokenizer).render("text", cut)
    assert rendered.endswith("\nSummary above sentence in one word: <|im_end|>\n<|im_start|>assistant\n")
    short = "A man plays a guitar ."
    assert truncate_to_tokens([short], tokenizer, 32) == [short]
    assert truncate_to_tokens([long], tokenizer, None) == [long]


def test_training_collator_renders_what_evaluation_renders(tiny_smol_llava_dir):
    from mmembed.data.text_pairs import TextPairCollator
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder

    embedder = MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir), text_only=True))
    rows = [{"sent0": "A cat sits.", "sent1": "A cat is sitting.", "hard_neg": "A dog runs."}]
    batch = TextPairCollator(embedder.featurize_text, lambda t: list(t))(rows)
    evaluation = embedder.featurize_text(["A cat sits.", "A cat is sitting.", "A dog runs."])
    assert batch["inputs"]["input_ids"].tolist() == evaluation["input_ids"].tolist()
    decoded = embedder.backbone.tokenizer.decode(evaluation["input_ids"][0][evaluation["attention_mask"][0].bool()])
    assert decoded == embedder.renderer.render("text", "A cat sits.")
