"""Embedder.encode: same vectors as MLLMEmbedder item by item, input order, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.inference import Embedder
from mmembed.inference.prefix import PrefixCache
from mmembed.models.prompts import PromptConfig
from tests.inference.conftest import noise_image

MIN_COS = 0.9999
TEXTS = [
    "A cat.",
    "A man riding a red bicycle down a steep hill while his dog runs behind him, barking.",
    "Two birds on a wire.",
    "A cat.",  # duplicate
    "Children play football in a muddy field after school on a rainy afternoon.",
    "Sunset.",
]


def one_by_one(embedder: Embedder, fn, items) -> torch.Tensor:
    """Reference: MLLMEmbedder on each item alone (no padding, no prefix cache, no batching)."""
    with torch.inference_mode():
        return torch.cat([fn(embedder.embedder, item) for item in items])


def assert_same_rows(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    cos = (got * expected).sum(-1)
    assert bool((cos >= MIN_COS).all()), cos.tolist()


def test_texts_match_plain_embedder_in_input_order(tiny_embedder):
    assert tiny_embedder.prefix is not None, "the chat prompts share a prefix: the cache should be on"
    got = tiny_embedder.encode(texts=TEXTS, batch_size=2)  # sorted by length into 3 padded batches
    expected = one_by_one(tiny_embedder, lambda e, t: e.encode_text([t]), TEXTS)
    assert_same_rows(got, expected)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)))
    assert torch.equal(got[0], got[3])
    # The rows are distinct, so an order mix-up would fail the comparison above.
    assert float((got[0] * got[1]).sum()) < MIN_COS


def test_prefix_cache_matches_plain_forward_on_padded_batch(tiny_embedder):
    inputs = tiny_embedder.embedder.featurize_text(TEXTS)
    assert bool((inputs["attention_mask"][:, 0] == 0).any())
    rest = tiny_embedder.prefix.split(inputs)
    assert rest is not None and rest["input_ids"].shape[1] == inputs["input_ids"].shape[1] - len(tiny_embedder.prefix)
    with torch.inference_mode():
        assert_same_rows(tiny_embedder.prefix.forward(rest), tiny_embedder.embedder(**inputs))


def test_prefix_split_refuses_rows_without_the_prefix(tiny_embedder):
    prefix: PrefixCache = tiny_embedder.prefix
    inputs = tiny_embedder.embedder.featurize_text(["A dog.", "A long sentence about two dogs."])
    inputs["input_ids"][1, -len(prefix) - 3] += 1  # corrupt one prefix token of the unpadded row
    assert prefix.split(inputs) is None
    right = dict(inputs, attention_mask=inputs["attention_mask"].flip(1))
    assert prefix.split(right) is None  # not left padded


def test_no_shared_prefix_falls_back_to_plain_forward(tiny_dir, tiny_embedder):
    plain = Embedder.from_pretrained(tiny_dir, prompts=PromptConfig(chat_template=False))
    assert plain.prefix is None  # prompts start with the sentence itself
    got = plain.encode(texts=TEXTS[:3])
    assert_same_rows(got, one_by_one(plain, lambda e, t: e.encode_text([t]), TEXTS[:3]))
    off = Embedder.from_pretrained(tiny_dir, prefix_cache=False)
    assert off.prefix is None
    assert_same_rows(off.encode(texts=TEXTS), tiny_embedder.encode(texts=TEXTS))


def test_images_paths_and_pil_match_plain_embedder(tiny_embedder, image_folder):
    paths = sorted(image_folder.iterdir())
    items = [str(paths[0]), noise_image(7), Image.open(paths[2]).convert("L"), paths[4]]
    tiny_embedder.image_chunk = 2  # batches of 3 go through the model 2 + 1 rows at a time
    try:
        got = tiny_embedder.encode(images=items, batch_size=3)
    finally:
        tiny_embedder.image_chunk = 8
    pil = [Image.open(p).convert("RGB") if not isinstance(p, Image.Image) else p.convert("RGB") for p in items]
    assert_same_rows(got, one_by_one(tiny_embedder, lambda e, im: e.encode_image([im]), pil))
    assert float((got[0] * got[1]).sum()) < MIN_COS


def test_composed_pairs_match_plain_embedder(tiny_embedder, image_folder):
    paths = sorted(image_folder.iterdir())
    pairs = [(paths[0], "make it red"), (paths[1], "a much longer edit that changes nearly everything"), (paths[0], "x")]
    got = tiny_embedder.encode(composed=pairs, batch_size=2)
    expected = one_by_one(
        tiny_embedder, lambda e, p: e.encode_composed([Image.open(p[0]).convert("RGB")], [p[1]]), pairs
    )
    assert_same_rows(got, expected)


def test_numpy_and_empty_results(tiny_embedder):
    arr = tiny_embedder.encode(texts=TEXTS[:2], to_numpy=True)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (2, tiny_embedder.dim)
    for modality in ("texts", "images", "composed"):
        empty = tiny_embedder.encode(**{modality: []})
        assert isinstance(empty, torch.Tensor) and empty.shape == (0, tiny_embedder.dim)
    assert tiny_embedder.encode(images=[], to_numpy=True).shape == (0, tiny_embedder.dim)


def test_one_modality_per_call(tiny_embedder, image_folder):
    path = next(image_folder.iterdir())
    with pytest.raises(ValueError, match=r"exactly one of texts=, images= or composed=.*texts= and images="):
        tiny_embedder.encode(texts=["a"], images=[path])
    with pytest.raises(ValueError, match="got none"):
        tiny_embedder.encode()
    with pytest.raises(TypeError, match="must be a list"):
        tiny_embedder.encode(texts="a dog")
    with pytest.raises(TypeError, match=r"composed\[0\] must be an \(image, text\) pair"):
        tiny_embedder.encode(composed=[path])


def test_missing_and_unreadable_images_are_named(tiny_embedder, image_folder, tmp_path):
    good = sorted(image_folder.iterdir())[0]
    missing = tmp_path / "no_such_photo.jpg"
    from mmembed.errors import BadImageError

    with pytest.raises(BadImageError, match="no_such_photo.jpg: missing: no such file"):
        tiny_embedder.encode(images=[good, missing])
    broken = tmp_path / "broken_photo.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(BadImageError, match="broken_photo.jpg"):
        tiny_embedder.encode(composed=[(broken, "make it blue")])


def test_progress_bar_for_large_inputs(tiny_embedder, capsys):
    tiny_embedder.encode(texts=["a", "b"], progress=True)
    assert "2/2" in capsys.readouterr().err
    tiny_embedder.encode(texts=["a", "b"])  # small input: no bar by default
    assert "2/2" not in capsys.readouterr().err


def test_unmerged_adapter_equals_merged(tiny_dir, lora_adapter_dir):
    merged = Embedder.from_pretrained(tiny_dir, adapter=lora_adapter_dir)
    unmerged = Embedder.from_pretrained(tiny_dir, adapter=lora_adapter_dir, merge_adapter=False)
    assert_same_rows(merged.encode(texts=TEXTS), unmerged.encode(texts=TEXTS))


def test_embedder_serves_the_evaluation_runner_with_the_same_vectors(tiny_dir):
    """eval.py wraps the model in Embedder; the runner's helpers must give MLLMEmbedder's vectors."""
    import torch
    from PIL import Image

    from mmembed.evaluation.encode import encode_texts
    from mmembed.inference import Embedder
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder

    plain = MLLMEmbedder(load_backbone(str(tiny_dir))).eval()
    fast = Embedder(plain)
    texts = ["a b c d e f g", "a dog", "a dog", "two cats on a long red sofa in the sun"]
    got = encode_texts(fast, texts, batch_size=2, progress=False)
    with torch.no_grad():
        want = torch.cat([plain.encode_text([t]) for t in texts])
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999
    assert fast.renderer is plain.renderer and fast.eval() is fast

    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    with torch.no_grad():
        want_img = plain.encode_image(images)
        want_cmp = plain.encode_composed(images, ["make it green", "x"])
    assert torch.nn.functional.cosine_similarity(fast.encode_image(images), want_img).min() > 0.9999
    assert torch.nn.functional.cosine_similarity(fast.encode_composed(images, ["make it green", "x"]), want_cmp).min() > 0.9999
