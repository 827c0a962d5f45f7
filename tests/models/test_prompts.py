"""Prompts: exact rendered strings, and training renders what evaluation renders."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from mmembed.errors import ConfigError
from mmembed.models.prompts import (
    PROMPTS_FILE,
    PromptConfig,
    PromptRenderer,
    save_prompts,
    saved_prompts,
    truncate_to_tokens,
)

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

# The released strings, copied from the papers' code (kongds/E5-V README.md and retrieval.py;
# deepglint/UniME README.md and self_evaluate/retrieval_self.py).
E5V_LLAMA3_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
)
E5V_TEXT_PROMPT = E5V_LLAMA3_TEMPLATE.format("<sent>\nSummary above sentence in one word: ")
E5V_IMG_PROMPT = E5V_LLAMA3_TEMPLATE.format("<image>\nSummary above image in one word: ")
UNIME_PHI_IMG = "<|user|>\n<|image_1|>\nSummary above image in one word: <|end|>\n<|assistant|>\n"
UNIME_PHI_TEXT = "<|user|>\n<sent>\nSummary above sentence in one word: <|end|>\n<|assistant|>\n"
UNIME_PHI_EVAL_IMG = "<|user|>\n<|image_1|>\nSummary above image in one word:<|end|>\n<|assistant|>\n"
UNIME_PHI_EVAL_TEXT = "<|user|>\n<sent>\nSummary above sentence in one word:<|end|>\n<|assistant|>\n"
UNIME_LLAVA_IMG = "[INST] <image>\nSummary above image in one word: [/INST]"
UNIME_LLAVA_TEXT = "[INST] <sent>\nSummary above sentence in one word: [/INST]"
# Meta-Llama-3-8B-Instruct's chat template: it trims the content and ends after the header.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SENTENCE = "A dog sitting in the grass."


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def special_tokenizer(model_dir, bos: str, specials: list[str], chat_template: str | None = None):
    """SmolLM2's tokenizer with another family's special tokens, `bos` as its BOS, and a post-processor that
    adds the BOS on add_special_tokens=True, as the Llama-3 / Llama (Phi-3.5-V, Mistral) tokenizers do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_tokens([bos, *specials], special_tokens=True)
    tok.bos_token = bos
    tok.add_bos_token = True
    tok.update_post_processor()
    tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def llama3_tokenizer(smol_tokenizer_dir):
    return special_tokenizer(
        smol_tokenizer_dir,
        "<|begin_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )


def group(name: str) -> PromptConfig:
    """A conf/prompt group as Hydra composes it (`prompt=<name>`)."""
    from omegaconf import OmegaConf

    from tests.pipeline.helpers import compose_train

    cfg = compose_train([f"prompt={name}"], "/tmp/unused")
    return PromptConfig.from_mapping(OmegaConf.to_container(cfg.prompt, resolve=True))


def ids(tok, text: str, **kwargs) -> list[int]:
    return tok(text, **kwargs)["input_ids"]


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
        SMOL_SYSTEM
        + "<|im_start|>user\nA dog.\nSummary above sentence in one word: <|im_end|>\n<|im_start|>assistant\n"
    )
    r2 = PromptRenderer(PromptConfig(system="Embed.", suffix=" \n"), tokenizer)
    assert r2.render("image") == (
        "<|im_start|>system\nEmbed.<|im_end|>\n<|im_start|>user\n<image>\nSummary above image in one word: "
        "<|im_end|>\n<|im_start|>assistant\n \n"
    )


def test_e5v_group_is_the_code_bodies_in_e5vs_literal_llama3_turn():
    # The bodies stay the code defaults; only the wrapping differs (E5-V's literal turn + BOS).
    assert group("e5v") == dataclasses.replace(
        PromptConfig(), chat_template=False, format=E5V_LLAMA3_TEMPLATE, bos=True
    )


def test_e5v_smol_and_raw_keep_e5vs_bodies_and_todays_wrapping():
    assert group("e5v_smol") == dataclasses.replace(PromptConfig(), system="")
    assert group("raw") == dataclasses.replace(PromptConfig(), chat_template=False)


def test_e5v_smol_rendering_is_unchanged(tokenizer):
    # Pinned from the code before prompt groups could give a literal format: trained adapters depend on it.
    r = PromptRenderer(group("e5v_smol"), tokenizer, "<image>")
    turn = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n"
    end = "<|im_end|>\n<|im_start|>assistant\n"
    assert r.render("text", "A dog.") == turn + "A dog.\nSummary above sentence in one word: " + end
    assert r.render("image") == turn + "<image>\nSummary above image in one word: " + end
    assert r.render("cir_query", "A dog.") == (
        turn + '<image>Modify this image with "A dog.", desribe modified image in one word:' + end
    )
    assert r.render("fiq_query", "A dog.", category="dress") == (
        turn + "<image> change the style of this dress to A dog.\n "
        "Desribe this modified dress in one word based on its style:" + end
    )
    assert r.user_turn("<image>\nDescribe the image.") == turn + "<image>\nDescribe the image." + end


def test_e5v_renders_e5vs_literal_strings_not_the_chat_template(llama3_tokenizer):
    r = PromptRenderer(group("e5v"), llama3_tokenizer, "<image>")
    # The tokenizer has Llama-3's chat template; a literal format wins even with chat_template on.
    also_chat = PromptRenderer(dataclasses.replace(group("e5v"), chat_template=True), llama3_tokenizer, "<image>")
    assert also_chat.render("text", SENTENCE) == r.render("text", SENTENCE)
    assert r.render("text", SENTENCE) == "<|begin_of_text|>" + E5V_TEXT_PROMPT.replace("<sent>", SENTENCE)
    assert r.render("image") == "<|begin_of_text|>" + E5V_IMG_PROMPT
    # retrieval.py's CIRR prompt: the Mistral form stripped of "[INST] " / " [/INST]", in the same turn.
    cirr = "[INST] <image>\n Describe this image in one word: [/INST]".replace("[INST] ", "").replace(" [/INST]", "")
    assert r.render("cir_target") == "<|begin_of_text|>" + E5V_LLAMA3_TEMPLATE.format(cirr)


def test_e5v_token_ids_equal_e5vs_processor_call(llama3_tokenizer):
    tok = llama3_tokenizer
    r = PromptRenderer(group("e5v"), tok, "<image>")
    ours = ids(tok, r.render("text", SENTENCE), add_special_tokens=False)  # as our featurizers tokenize
    e5v = ids(tok, E5V_TEXT_PROMPT.replace("<sent>", SENTENCE))  # as E5-V's processor call does (BOS added)
    assert ours == e5v
    assert ids(tok, r.render("image"), add_special_tokens=False) == ids(tok, E5V_IMG_PROMPT)
    bos, start, end_header, eot = tok.convert_tokens_to_ids(
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    )
    assert ours[:4] == [bos, start, ids(tok, "user", add_special_tokens=False)[0], end_header]
    assert ours.count(bos) == 1 and ours.count(start) == 2 and ours.count(end_header) == 2 and ours.count(eot) == 1
    # The body's trailing space and the turn's final " \n" survive as tokens of their own.
    assert tok.decode(ours[ours.index(eot) - 1 :][:1]) == " "
    assert tok.decode(ours[len(ours) - 1 - ours[::-1].index(end_header) + 1 :]) == "\n\n \n"
    # What prompt=e5v rendered before: Llama-3's chat template trims and ends on "\n\n", another last token.
    chat = PromptRenderer(dataclasses.replace(PromptConfig(), bos=True), tok, "<image>")
    old = ids(tok, chat.render("text", SENTENCE), add_special_tokens=False)
    assert old[-1] != ours[-1] and tok.decode(old[-1:]) == "\n\n"
    assert old.count(bos) == 1  # the chat template writes its own BOS; bos=true does not double it


def test_unime_phi35v_strings_and_token_ids(smol_tokenizer_dir):
    tok = special_tokenizer(smol_tokenizer_dir, "<s>", ["<|user|>", "<|end|>", "<|assistant|>", "<|image_1|>"])
    # <|image_1|> is one id here; Phi-3.5-V's processor splits on it and inserts the image positions.
    r = PromptRenderer(group("unime_phi35v"), tok, "<|image_1|>")
    assert r.render("text", SENTENCE) == "<s>" + UNIME_PHI_TEXT.replace("<sent>", SENTENCE)
    assert r.render("image") == "<s>" + UNIME_PHI_IMG
    assert ids(tok, r.render("text", SENTENCE), add_special_tokens=False) == ids(
        tok, UNIME_PHI_TEXT.replace("<sent>", SENTENCE)
    )
    assert ids(tok, r.render("image"), add_special_tokens=False) == ids(tok, UNIME_PHI_IMG)
    evaluation = PromptRenderer(group("unime_phi35v_eval"), tok, "<|image_1|>")
    assert evaluation.render("text", SENTENCE) == "<s>" + UNIME_PHI_EVAL_TEXT.replace("<sent>", SENTENCE)
    assert evaluation.render("image") == "<s>" + UNIME_PHI_EVAL_IMG
    # E5-V's retrieval.py phi3 branch wraps its CIR prompts as '<|user|>\n{} <|end|>\n<|assistant|>\n'.
    assert (
        r.render("cir_target") == "<s><|user|>\n<|image_1|>\n Describe this image in one word: <|end|>\n<|assistant|>\n"
    )


def test_unime_llava16_strings_and_token_ids(smol_tokenizer_dir):
    tok = special_tokenizer(smol_tokenizer_dir, "<s>", [])  # [INST] is plain text for Mistral; <image> is special
    r = PromptRenderer(group("unime_llava16"), tok, "<image>")
    assert r.render("text", SENTENCE) == "<s>" + UNIME_LLAVA_TEXT.replace("<sent>", SENTENCE)
    assert r.render("image") == "<s>" + UNIME_LLAVA_IMG
    assert ids(tok, r.render("text", SENTENCE), add_special_tokens=False) == ids(
        tok, UNIME_LLAVA_TEXT.replace("<sent>", SENTENCE)
    )
    assert ids(tok, r.render("image"), add_special_tokens=False) == ids(tok, UNIME_LLAVA_IMG)
    # E5-V's retrieval.py LLaVA-NeXT (Mistral) CIRR prompt, which these bodies reproduce.
    assert r.render("cir_query", "make it red") == (
        '<s>[INST] <image>Modify this image with "make it red", desribe modified image in one word: [/INST]'
    )


def sentencepiece_tokenizer(legacy: bool):
    """A tiny Llama (SentencePiece-style) tokenizer: one token per character, "▁" for spaces."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for char in sorted(set(UNIME_LLAVA_TEXT + SENTENCE) - {" "}):
        vocab.setdefault(char, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[], legacy=legacy)
    tok.add_bos_token = True
    tok.update_post_processor()
    return tok


def test_written_bos_matches_a_legacy_sentencepiece_tokenizer(caplog):
    tok = sentencepiece_tokenizer(legacy=True)  # Metaspace prepends "▁" to every piece of text
    with caplog.at_level(logging.WARNING, logger="mmembed.models.prompts"):
        r = PromptRenderer(group("unime_llava16"), tok, "<image>")
    assert caplog.records == []
    expected = ids(tok, UNIME_LLAVA_TEXT.replace("<sent>", SENTENCE))
    assert expected[:3] == [1, 3, tok.convert_tokens_to_ids("[")]  # <s> ▁ [
    assert ids(tok, r.render("text", SENTENCE), add_special_tokens=False) == expected


def test_a_tokenizer_that_drops_the_prefix_after_a_written_bos_is_reported(caplog):
    tok = sentencepiece_tokenizer(legacy=False)  # "▁" only at the very start of the text
    with caplog.at_level(logging.WARNING, logger="mmembed.models.prompts"):
        PromptRenderer(group("unime_llava16"), tok, "<image>")
    (record,) = caplog.records
    assert "tokenizes differently after a written BOS '<s>'" in record.getMessage()


def test_format_is_literal_and_user_turn_honours_it():
    r = PromptRenderer(PromptConfig(format="<u>{}</u>", chat_template=False), None)
    # Braces in a text are text, not format fields.
    assert r.render("text", "a {} {0} b") == "<u>a {} {0} b\nSummary above sentence in one word: </u>"
    assert r.user_turn("<image>\nDescribe the image in one sentence.") == (
        "<u><image>\nDescribe the image in one sentence.</u>"
    )
    suffixed = PromptRenderer(PromptConfig(format="[{}]", suffix="!"), None)
    assert suffixed.render("image") == "[<image>\nSummary above image in one word: ]!"


def test_bad_format_and_bos_settings_raise_config_errors():
    with pytest.raises(ConfigError, match=r"prompt.format must contain exactly one '\{\}'.*found 0"):
        PromptConfig(format="no placeholder")
    with pytest.raises(ConfigError, match="found 2"):
        PromptConfig.from_mapping({"format": "{} and {}"})
    with pytest.raises(ConfigError, match="prompt.system is set but prompt.format replaces the chat template"):
        PromptConfig(format="<u>{}</u>", system="")
    with pytest.raises(ConfigError, match="prompt.bos must be true or false"):
        PromptConfig(bos="yes")
    with pytest.raises(ConfigError, match="prompt.bos=true but this model's tokenizer has no BOS token"):
        PromptRenderer(PromptConfig(bos=True), tokenizer=None)
    with pytest.raises(ConfigError, match="unknown prompt settings"):
        PromptConfig.from_mapping({"fromat": "{}"})


def test_saved_prompts_keep_format_and_bos_and_old_files_still_load(tmp_path):
    e5v = group("e5v")
    save_prompts(e5v, tmp_path)
    assert json.loads((tmp_path / PROMPTS_FILE).read_text())["format"] == E5V_LLAMA3_TEMPLATE
    assert saved_prompts(None, tmp_path) == e5v
    # A file written before format/bos existed: rendered without them, so it loads with them off.
    old = tmp_path / "old"
    old.mkdir()
    fields = {k: v for k, v in dataclasses.asdict(PromptConfig(system="")).items() if k not in ("format", "bos")}
    (old / PROMPTS_FILE).write_text(json.dumps(fields))
    loaded = saved_prompts(old)
    assert loaded == PromptConfig(system="") and loaded.format is None and loaded.bos is False


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
    r = PromptRenderer(
        PromptConfig(chat_template=False), None, image_token="<|vision_start|><|image_pad|><|vision_end|>"
    )
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
    from mmembed.data.collate import ObjectiveCollator, TextPairRows
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.objectives import TextPairInfoNCE

    embedder = MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir), text_only=True))
    rows = [{"sent0": "A cat sits.", "sent1": "A cat is sitting.", "hard_neg": "A dog runs."}]
    featurizer = embedder.featurizer
    batch = ObjectiveCollator(TextPairRows(featurizer, 32), TextPairInfoNCE(), featurizer)(rows)
    evaluation = embedder.featurize_text(["A cat sits.", "A cat is sitting.", "A dog runs."])
    assert batch["features"]["inputs"]["input_ids"].tolist() == evaluation["input_ids"].tolist()
    decoded = embedder.backbone.tokenizer.decode(evaluation["input_ids"][0][evaluation["attention_mask"][0].bool()])
    assert decoded == embedder.renderer.render("text", "A cat sits.")
