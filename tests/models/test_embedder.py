"""MLLMEmbedder against E5-V's reference recipe, padding sides, no LM head, and pinned prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from tests.tiny_models import build_tiny

TEXTS = [
    "A cat.",
    "A man riding a red bicycle down a steep hill while his dog runs behind him.",
    "Two birds on a wire.",
]
MIN_COS = 0.9999


def _images(sizes) -> list[Image.Image]:
    return [
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (h, w, 3), dtype=np.uint8))
        for i, (w, h) in enumerate(sizes)
    ]


# Different aspect ratios -> different anyres tilings -> different numbers of image tokens, so the
# batch is padded.
TINY_IMAGES_SIZES = [(40, 40), (80, 30), (30, 70)]


def e5v_reference(model, inputs) -> torch.Tensor:
    """E5-V's own recipe: full model forward, last layer, last position, L2 normalise."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return F.normalize(out.hidden_states[-1][:, -1, :].float(), dim=-1)


def assert_rows_match(got: torch.Tensor, expected: torch.Tensor, min_cos: float = MIN_COS) -> None:
    assert got.shape == expected.shape
    cos = (F.normalize(got, dim=-1) * F.normalize(expected, dim=-1)).sum(-1)
    assert bool((cos >= min_cos).all()), f"cosines {cos.tolist()}"


@pytest.fixture(scope="module")
def tiny_llava_next_dir(smol_tokenizer_dir, tmp_path_factory) -> Path:
    return build_tiny("llava_next", smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="module")
def left(tiny_llava_next_dir) -> MLLMEmbedder:
    return MLLMEmbedder(load_backbone(str(tiny_llava_next_dir), padding_side="left"))


@pytest.fixture(scope="module")
def right(tiny_llava_next_dir) -> MLLMEmbedder:
    return MLLMEmbedder(load_backbone(str(tiny_llava_next_dir), padding_side="right"))


# ---- (a) E5-V reference equality, left padding ----


def test_encode_text_matches_e5v_reference_left_padding(left):
    inputs = left.featurize_text(TEXTS)
    mask = inputs["attention_mask"]
    assert bool((mask[:, 0] == 0).any()), "texts of different lengths must be padded"
    assert bool((mask[:, -1] == 1).all()), "left padding puts every last token in the final column"
    with torch.no_grad():
        got = left.encode_text(TEXTS)
    assert got.shape == (len(TEXTS), left.model.config.text_config.hidden_size)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)))
    assert_rows_match(got, e5v_reference(left.model, inputs))
    # The rows are not trivially equal to each other.
    assert float((got[0] * got[1]).sum()) < MIN_COS


def test_encode_image_matches_e5v_reference_left_padding(left):
    images = _images(TINY_IMAGES_SIZES)
    inputs = left.featurize_images(images)
    assert bool((inputs["attention_mask"][:, 0] == 0).any()), "the image batch must be padded"
    with torch.no_grad():
        got = left.encode_image(images)
    assert_rows_match(got, e5v_reference(left.model, inputs))


def test_encode_composed_matches_e5v_reference(left):
    images = _images(TINY_IMAGES_SIZES[:2])
    texts = ["make it blue", "remove the dog and add two cats"]
    inputs = left.featurize_images(images, texts, kind="cir_query")
    with torch.no_grad():
        got = left.encode_composed(images, texts)
    assert_rows_match(got, e5v_reference(left.model, inputs))


def test_reference_sees_the_final_norm(left):
    """Guard for the test above: the tiny model's final norm has non-unit weights, so a pooled
    pre-norm state would not pass for the post-norm one."""
    inputs = left.featurize_text(TEXTS)
    captured = {}
    final_norm = left.model.model.language_model.norm
    handle = final_norm.register_forward_hook(lambda m, args, out: captured.update(pre=args[0], post=out))
    try:
        reference = e5v_reference(left.model, inputs)
    finally:
        handle.remove()
    # hidden_states[-1] is the final norm's output ...
    assert_rows_match(F.normalize(captured["post"][:, -1, :], dim=-1), reference)
    # ... and its input points elsewhere.
    pre_norm = F.normalize(captured["pre"][:, -1, :], dim=-1)
    assert bool(((pre_norm * reference).sum(-1) < MIN_COS).all())


# ---- (b) right padding gives the same embeddings: pooling reads the mask ----


def test_right_padding_equals_left_padding_text(left, right):
    inputs = right.featurize_text(TEXTS)
    mask = inputs["attention_mask"]
    assert bool((mask[:, -1] == 0).any()), "right padding must put padding in the final column"
    with torch.no_grad():
        got = right.encode_text(TEXTS)
        expected = left.encode_text(TEXTS)
    assert_rows_match(got, expected)
    # The naive `[:, -1]` would read a pad position for padded rows and be wrong there.
    naive = e5v_reference(right.model, inputs)
    padded_rows = mask[:, -1] == 0
    cos = (naive[padded_rows] * expected[padded_rows]).sum(-1)
    assert bool((cos < MIN_COS).all())


def test_right_padding_equals_left_padding_images(left, right):
    images = _images(TINY_IMAGES_SIZES)
    inputs = right.featurize_images(images)
    assert bool((inputs["attention_mask"][:, -1] == 0).any())
    with torch.no_grad():
        assert_rows_match(right.encode_image(images), left.encode_image(images))


def test_embedding_does_not_depend_on_batch_mates(left):
    with torch.no_grad():
        alone = torch.cat([left.encode_text([t]) for t in TEXTS])
        batched = left.encode_text(TEXTS)
    assert_rows_match(batched, alone)


def test_chunk_of_a_padded_batch_is_trimmed_and_embeds_the_same(left):
    """A GradCache chunk cut from a batch padded for a longer sentence loses its all-padding columns
    (less compute) and gives the embeddings of the whole batch."""
    from mmembed.models.embedder import trim_padding

    texts = ["A dog.", "A cat sat.", "A very long sentence about many different things in a large city park."]
    inputs = left.featurize_text(texts)
    chunk = {k: v[:2] for k, v in inputs.items()}
    trimmed = trim_padding(chunk)
    assert trimmed["input_ids"].shape[1] < chunk["input_ids"].shape[1]
    assert bool(trimmed["attention_mask"][:, 0].any()) and bool(trimmed["attention_mask"][:, -1].all())
    with torch.no_grad():
        assert_rows_match(left(**chunk), left(**inputs)[:2])
    assert trim_padding(inputs)["input_ids"] is inputs["input_ids"]  # nothing to trim: untouched


# ---- (d) no vocabulary logits ----


def test_embedder_never_calls_the_lm_head(tiny_llava_next_dir):
    embedder = MLLMEmbedder(load_backbone(str(tiny_llava_next_dir)))
    calls = []

    def refuse(module, args):
        calls.append(1)
        raise AssertionError("the LM head must not run while embedding")

    handle = embedder.model.lm_head.register_forward_pre_hook(refuse)
    try:
        with torch.no_grad():
            assert embedder.encode_text(TEXTS).shape[0] == len(TEXTS)
            assert embedder.encode_image(_images(TINY_IMAGES_SIZES[:2])).shape[0] == 2
        # The hook is live: a full model forward (which computes logits) trips it.
        with pytest.raises(AssertionError, match="LM head"):
            embedder.model(**embedder.featurize_text(TEXTS[:1]))
    finally:
        handle.remove()
    assert calls == [1]


# ---- the real default model ----


@pytest.fixture(scope="module")
def default_embedder(default_model_dir) -> MLLMEmbedder:
    return MLLMEmbedder(load_backbone(str(default_model_dir)))


DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_default_model_rendered_prompts_are_pinned(default_embedder):
    renderer = default_embedder.renderer
    assert renderer.render("text", "A cat.") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nA cat.\nSummary above sentence in one word: <|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert renderer.render("image") == (
        DEFAULT_SYSTEM
        + "<|im_start|>user\n<image>\nSummary above image in one word: <|im_end|>\n<|im_start|>assistant\n"
    )
    # The tokenizer keeps the chat markers as single special tokens (not split into pieces).
    ids = default_embedder.featurize_text(["A cat."])["input_ids"][0].tolist()
    tokenizer = default_embedder.backbone.tokenizer
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids.count(im_start) == 3


@pytest.mark.slow
def test_default_model_matches_e5v_reference(default_embedder, data_root):
    embedder = default_embedder
    inputs = embedder.featurize_text(TEXTS)
    assert bool((inputs["attention_mask"][:, 0] == 0).any())
    with torch.no_grad():
        got = embedder.encode_text(TEXTS)
    assert_rows_match(got, e5v_reference(embedder.model, inputs))

    paths = sorted((data_root / "coco" / "train2017").glob("*.jpg"))[:2]
    assert len(paths) == 2, f"no COCO images under {data_root}"
    images = [Image.open(p).convert("RGB") for p in paths]
    image_inputs = embedder.featurize_images(images)
    with torch.no_grad():
        got_images = embedder.encode_image(images)
    assert_rows_match(got_images, e5v_reference(embedder.model, image_inputs))
    assert float((got_images[0] * got_images[1]).sum()) < MIN_COS

    # Right padding on the real model gives the same text embeddings.
    right = MLLMEmbedder(load_backbone(str(embedder.backbone.name_or_path), padding_side="right"))
    with torch.no_grad():
        assert_rows_match(right.encode_text(TEXTS), got)


def test_vision_dtype_keeps_tower_and_projector_in_float32_beside_a_bf16_llm(tiny_smol_llava_dir):
    from mmembed.inference import Embedder
    from mmembed.models.backbones import vision_modules

    full = load_backbone(str(tiny_smol_llava_dir))
    mixed = Embedder.from_pretrained(tiny_smol_llava_dir, dtype="bfloat16", vision_dtype="float32")
    model = mixed.backbone.model
    assert {p.dtype for m in vision_modules(model).values() for p in m.parameters()} == {torch.float32}
    assert {p.dtype for p in model.model.language_model.parameters()} == {torch.bfloat16}
    images = _images([(48, 40), (40, 40)])
    pixels = mixed.embedder.featurizer.featurize_images(images)["pixel_values"]
    bf16 = load_backbone(str(tiny_smol_llava_dir), dtype="bfloat16").model
    with torch.no_grad():  # the image tokens are float32's (then cast for the bf16 LLM); all-bf16's are not
        want = full.model.model.get_image_features(pixels)
        got = model.model.get_image_features(pixels)
        rounded = bf16.model.get_image_features(pixels).float()
        vectors = mixed.encode(images=images)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 1e-5  # Embedder's channels-last convs
    assert (rounded - want).abs().max() > 1e-3
    assert vectors.shape[0] == 2 and torch.isfinite(torch.as_tensor(vectors)).all()
    with pytest.raises(Exception, match="vision_dtype='float8'"):
        load_backbone(str(tiny_smol_llava_dir), vision_dtype="float8")
