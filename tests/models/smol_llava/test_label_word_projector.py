"""The label-word projector: an image is the tower's top-k class names as the LLM's own word tokens.

The equalities below are what makes it an image path the LLM reads as text: with the holes taken out of
attention and positions, an image gives the same hidden states, embeddings and greedy generations as the
label text written into the prompt, through every path (plain forward, the prefix cache, generate).
"""

from __future__ import annotations

import pytest
import torch

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.label_words import LabelWordProjector, label_vocabulary, span_length

IMAGE_ID, VISION = 63, 1280
TINY_TEXT = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1)
# class c's name tokens (ids < 40 so they never meet the image token); prefix "a photo of" = [1, 2, 3]; "," = [4]
NAMES = [[10], [11, 12], [13, 14, 15], [16], [17, 18, 19, 20]]
PREFIX, SEPARATOR = [1, 2, 3], [4]


def tiny_label_words(top_k: int = 2, span: int | None = None):
    from mmembed.models.smol_llava.modeling import SmolLlavaConfig, SmolLlavaForConditionalGeneration

    vocabulary = {"name_ids": NAMES, "prefix_ids": PREFIX, "separator_ids": SEPARATOR}
    config = SmolLlavaConfig(
        text_config=TINY_TEXT, image_token_id=IMAGE_ID, projector_type="label_words", grounded_num_classes=len(NAMES),
        image_seq_length=span or span_length(vocabulary, top_k), label_top_k=top_k,
        label_max_name_tokens=max(map(len, NAMES)), label_prefix_length=len(PREFIX), label_separator_length=1,
    )
    torch.manual_seed(0)
    model = SmolLlavaForConditionalGeneration(config).eval()
    head = torch.nn.Linear(VISION, len(NAMES))
    model.model.multi_modal_projector.load_vocabulary(head, **vocabulary)
    return model


def features_for(model, *rankings: list[int]) -> torch.Tensor:
    """Tower feature maps [B, 1280, 7, 7] whose head logits rank the classes in the given orders: the head
    is set to read class c from channel c, the map is constant with channel c = score of c."""
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        proj.classifier.weight.zero_()
        proj.classifier.bias.zero_()
        for c in range(len(NAMES)):
            proj.classifier.weight[c, c] = 1.0
    maps = torch.zeros(len(rankings), VISION, 7, 7)
    for b, ranking in enumerate(rankings):
        for place, c in enumerate(ranking):
            maps[b, c] = float(len(NAMES) - place)
    return maps


def label_text(ranking: list[int], top_k: int) -> list[int]:
    ids = list(PREFIX)
    for i, c in enumerate(ranking[:top_k]):
        ids += (SEPARATOR if i else []) + NAMES[c]
    return ids


def test_label_ids_are_the_label_text_right_aligned_with_holes_before_it():
    model = tiny_label_words(top_k=2)
    span = model.config.image_seq_length
    assert span == 3 + 1 + 4 + 3  # prefix, one separator, the two longest names
    proj = model.model.multi_modal_projector
    maps = features_for(model, [2, 0, 1, 3, 4], [4, 1, 0, 2, 3])
    ids, valid = proj.label_ids(maps.flatten(2).transpose(1, 2))
    first = [1, 2, 3, 13, 14, 15, 4, 10]  # "a photo of" + name 2 + "," + name 0
    second = [1, 2, 3, 17, 18, 19, 20, 4, 11, 12]
    assert ids[0].tolist() == [0] * (span - len(first)) + first
    assert valid[0].tolist() == [False] * (span - len(first)) + [True] * len(first)
    assert ids[1].tolist() == [0] * (span - len(second)) + second and int(valid[1].sum()) == len(second)


def test_a_span_shorter_than_the_label_text_keeps_its_end():
    model = tiny_label_words(top_k=2, span=5)
    ids, valid = model.model.multi_modal_projector.label_ids(
        features_for(model, [4, 1, 0, 2, 3]).flatten(2).transpose(1, 2))
    assert ids[0].tolist() == [19, 20, 4, 11, 12] and bool(valid.all())


def _prompt(tokens: list[int], before=(5, 6), after=(7, 8, 9)) -> list[int]:
    return [*before, *tokens, *after]


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_an_image_reads_to_the_llm_exactly_as_its_label_text_written_into_the_prompt():
    model = tiny_label_words(top_k=2)
    rankings = [[2, 0, 1, 3, 4], [3, 0, 1, 2, 4]]  # label texts of 8 and 6 tokens: different hole counts
    maps = features_for(model, *rankings)
    span = model.config.image_seq_length
    image_ids, image_mask = _left_pad([_prompt([IMAGE_ID] * span), _prompt([IMAGE_ID] * span, before=(5,))])
    text_ids, text_mask = _left_pad([_prompt(label_text(rankings[0], 2)), _prompt(label_text(rankings[1], 2), before=(5,))])
    with torch.no_grad():
        image = model.model(input_ids=image_ids, attention_mask=image_mask, vision_features=maps).last_hidden_state
        text = model.model(input_ids=text_ids, attention_mask=text_mask).last_hidden_state
    # the last three tokens (the prompt after the image) see identical contexts
    torch.testing.assert_close(image[:, -3:], text[:, -3:], atol=1e-5, rtol=1e-5)
    # without the holes taken out the LLM would see something else: the equality is not automatic
    from mmembed.models.smol_llava.holes import holes_of

    with torch.no_grad():
        tokens, valid = model.model.project_images(vision_features=maps)
        embeds = model.get_input_embeddings()(image_ids).masked_scatter(
            (image_ids == IMAGE_ID).unsqueeze(-1), tokens.reshape(-1, tokens.shape[-1]))
        plain = model.model.language_model(inputs_embeds=embeds, attention_mask=image_mask).last_hidden_state
    assert holes_of(image_ids, IMAGE_ID, valid).sum() == 2 * span - 8 - 6
    assert (plain[:, -1] - text[:, -1]).abs().max() > 1e-3


def test_the_prefix_cache_path_gives_the_same_states_as_one_pass():
    """prefix.py runs a shared prompt prefix once and passes the rest with a cache and position ids that
    count every column: the holes must still come out of both."""
    from transformers import DynamicCache

    model = tiny_label_words(top_k=2)
    maps = features_for(model, [2, 0, 1, 3, 4])
    span = model.config.image_seq_length
    prefix, rest = [5, 6], [IMAGE_ID] * span + [7, 8, 9]
    with torch.no_grad():
        whole = model.model(input_ids=torch.tensor([prefix + rest]), vision_features=maps).last_hidden_state
        cache = DynamicCache()
        model.model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True)
        after = model.model(input_ids=torch.tensor([rest]), attention_mask=torch.ones(1, len(prefix) + len(rest)),
                            position_ids=torch.arange(len(prefix), len(prefix) + len(rest))[None],
                            cache=cache, use_cache=True, vision_features=maps).last_hidden_state
    torch.testing.assert_close(after[:, -3:], whole[:, -3:], atol=1e-5, rtol=1e-5)


def test_greedy_generation_from_an_image_equals_generation_from_its_label_text():
    model = tiny_label_words(top_k=2)
    ranking = [4, 1, 0, 2, 3]
    maps = features_for(model, ranking)
    span = model.config.image_seq_length
    image_ids = torch.tensor([_prompt([IMAGE_ID] * span)])
    text_ids = torch.tensor([_prompt(label_text(ranking, 2))])
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        from_image = model.generate(input_ids=image_ids, attention_mask=torch.ones_like(image_ids),
                                    vision_features=maps, **settings)
        from_text = model.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids), **settings)
    assert from_image.sequences[0, image_ids.shape[1]:].tolist() == from_text.sequences[0, text_ids.shape[1]:].tolist()
    # every decoding step's logits, not only the argmax: the holes stay out of attention and positions throughout
    for step_image, step_text in zip(from_image.logits, from_text.logits, strict=True):
        torch.testing.assert_close(step_image, step_text, atol=1e-4, rtol=1e-4)


def test_the_learned_path_starts_at_zero_and_trains_under_a_captioning_loss():
    model = tiny_label_words(top_k=2)
    maps = features_for(model, [2, 0, 1, 3, 4])
    proj = model.model.multi_modal_projector
    tokens, valid = model.model.project_images(vision_features=maps)
    ids, _ = proj.label_ids(maps.flatten(2).transpose(1, 2))
    assert torch.equal(tokens, model.get_input_embeddings()(ids))  # the words alone before alignment
    span = model.config.image_seq_length
    input_ids = torch.tensor([_prompt([IMAGE_ID] * span)])
    labels = torch.full_like(input_ids, -100)
    labels[0, -3:] = input_ids[0, -3:]
    model.train()
    model(input_ids=input_ids, vision_features=maps, labels=labels).loss.backward()
    assert proj.mlp.linear_2.weight.grad.abs().sum() > 0 and proj.mlp_weight.grad is not None


def test_folder_round_trip_keeps_the_token_tables(tmp_path):
    from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

    model = tiny_label_words(top_k=3)
    maps = features_for(model, [1, 4, 2, 0, 3])
    model.save_pretrained(tmp_path / "lw")
    loaded = SmolLlavaForConditionalGeneration.from_pretrained(tmp_path / "lw").eval()
    proj = loaded.model.multi_modal_projector
    assert isinstance(proj, LabelWordProjector) and proj.name_ids[4].tolist() == [17, 18, 19, 20]
    assert proj.prefix_ids.tolist() == PREFIX and proj.name_lengths.tolist() == [1, 2, 3, 1, 4]
    a, b = (m.model.project_images(vision_features=maps) for m in (model, loaded))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_label_vocabulary_matches_the_tokenizer_on_the_whole_label_text(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    names = ["golden retriever", "tennis ball", "Granny Smith", "cat"]
    vocabulary = label_vocabulary(names, tokenizer, "a photo of {}")
    written = tokenizer("a photo of golden retriever, Granny Smith, cat", add_special_tokens=False)["input_ids"]
    assembled = (vocabulary["prefix_ids"] + vocabulary["name_ids"][0] + vocabulary["separator_ids"]
                 + vocabulary["name_ids"][2] + vocabulary["separator_ids"] + vocabulary["name_ids"][3])
    assert assembled == written
    assert span_length(vocabulary, 2) == len(vocabulary["prefix_ids"]) + 1 + sum(
        sorted(map(len, vocabulary["name_ids"]), reverse=True)[:2])
    assert label_vocabulary(["cat"], tokenizer, "{}")["prefix_ids"] == []


@pytest.mark.parametrize("template", ["a photo of", "{} in a photo", "{} and {}"])
def test_a_template_that_does_not_end_in_the_names_is_refused(smol_tokenizer_dir, template):
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="label_template"):
        label_vocabulary(["cat"], AutoTokenizer.from_pretrained(smol_tokenizer_dir), template)


def test_generation_from_pixels_equals_generation_from_their_tower_features():
    model = tiny_label_words(top_k=2)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = model.model.get_vision_features(pixels)
    span = model.config.image_seq_length
    ids = torch.tensor([_prompt([IMAGE_ID] * span)])
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        from_pixels = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, **settings)
        from_maps = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), vision_features=maps, **settings)
    assert from_pixels.sequences.tolist() == from_maps.sequences.tolist()
    for a, b in zip(from_pixels.logits, from_maps.logits, strict=True):
        torch.testing.assert_close(a, b)


def test_alignment_trains_every_parameter_it_marks_trainable():
    """projector.requires_grad_(True) (what experiment=align does) leaves the head frozen: it only picks label
    ids under no_grad, and a trainable parameter without a gradient makes DDP fail at the second step."""
    from mmembed.models.smol_llava.projectors.label_words import LabelWordProjector
    from mmembed.models.smol_llava.projectors.mlp import MLPProjector

    projector = LabelWordProjector(vision_dim=6, num_classes=5, seq_length=4, max_name_tokens=2, top_k=2,
                                   mlp=MLPProjector(6, 8))
    projector.requires_grad_(False).requires_grad_(True)
    embed = torch.nn.Embedding(10, 8).requires_grad_(False)
    tokens, valid = projector(torch.randn(3, 5, 6), embed)
    tokens.sum().backward()
    trainable = {name for name, p in projector.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in projector.named_parameters() if p.grad is not None}
    assert not any(name.startswith("classifier") for name in trainable) and "mlp_weight" in trainable
