"""The vision feature cache: keyed by image content, preprocessing and tower; cached == uncached."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image

from mmembed.models.vision_feature_cache import (
    VisionFeatureCache,
    image_digest,
    preprocessing_fingerprint,
    vision_model_key,
)


def test_image_digest_is_the_sha256_of_the_file_bytes_or_the_pixels(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path)
    assert image_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert image_digest(path.read_bytes()) == image_digest(str(path))
    same, other = Image.new("RGB", (4, 3), (10, 20, 30)), Image.new("RGB", (4, 3), (10, 20, 31))
    assert image_digest(same) == image_digest(Image.new("RGB", (4, 3), (10, 20, 30)))
    assert image_digest(same) != image_digest(other)


def test_keys_change_with_preprocessing_and_folders_with_the_tower(tmp_path):
    image = Image.new("RGB", (4, 4))
    a = VisionFeatureCache("tower-a", preprocessing_fingerprint({"size": 224}), tmp_path)
    b = VisionFeatureCache("tower-a", preprocessing_fingerprint({"size": 256}), tmp_path)
    assert a.key(image) != b.key(image)
    assert a.path(a.key(image)) == tmp_path / "vision_features" / "tower-a" / a.key(image)[:2] / f"{a.key(image)}.safetensors"

    tower = torch.nn.Conv2d(3, 4, 1)
    before = vision_model_key(tower)
    assert before.startswith("conv2d-") and vision_model_key(tower) == before
    with torch.no_grad():
        tower.weight[0, 0, 0, 0] += 1
    assert vision_model_key(tower) != before


def test_lookup_computes_only_what_is_missing_and_reads_back_exact_tensors(tmp_path):
    cache = VisionFeatureCache("t", "p", tmp_path)
    images = [Image.new("RGB", (2, 2), (i, 0, 0)) for i in range(3)]
    calls = []

    def compute(batch):
        calls.append(len(batch))
        return torch.stack([torch.full((2, 1, 1), float(img.getpixel((0, 0))[0])) for img in batch]) / 3

    first, computed = cache.lookup(images[:2], compute)
    second, computed_again = cache.lookup(images, compute)
    assert (computed, computed_again, calls) == (2, 1, [2, 1])
    assert torch.equal(second[:2], first)
    assert torch.equal(second[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]) / 3)
    assert torch.equal(cache.get(cache.key(images[2])), second[2])


@pytest.fixture(scope="module")
def tiny_model_and_processor(tiny_smol_llava_dir):
    from transformers import LlavaProcessor

    from mmembed.models.smol_llava.modeling import SmolLlavaForConditionalGeneration

    model = SmolLlavaForConditionalGeneration.from_pretrained(tiny_smol_llava_dir).eval()
    return model, LlavaProcessor.from_pretrained(tiny_smol_llava_dir)


def test_cached_features_give_the_same_caption_loss_gradients_and_embeddings(tiny_model_and_processor, data_root,
                                                                           tmp_path):
    from mmembed.models.featurizer import Featurizer

    model, processor = tiny_model_and_processor
    paths = sorted((data_root / "coco" / "train2017").glob("*.jpg"))[:3]
    images = [Image.open(p).convert("RGB") for p in paths]
    featurizer = Featurizer(processor, processor.tokenizer, "smol_llava", "<image>")
    inputs = featurizer.caption_inputs(images, ["a cat on a mat", "two dogs", "a red bus in the street"])
    pixel_values = inputs.pop("pixel_values")
    cache = VisionFeatureCache.for_model(model, processor.image_processor, tmp_path)

    def loss_and_grad(**image_input):
        model.zero_grad()
        loss = model(**inputs, **image_input).loss
        loss.backward()
        return loss.detach(), model.model.multi_modal_projector.linear_1.weight.grad.clone()

    uncached = loss_and_grad(pixel_values=pixel_values)
    computed = cache.vision_features(paths, model, processor.image_processor)  # computes and stores
    from_disk, n_new = cache.lookup(paths, lambda batch: pytest.fail("everything should be cached"))
    assert n_new == 0 and torch.equal(from_disk, computed)
    cached = loss_and_grad(vision_features=from_disk)
    assert torch.allclose(cached[0], uncached[0], rtol=0, atol=1e-6)
    assert torch.allclose(cached[1], uncached[1], rtol=1e-5, atol=1e-8)

    prompt = featurizer.featurize_images(images)
    with torch.no_grad():
        plain = model.model(**prompt).last_hidden_state[:, -1]
        prompt.pop("pixel_values")
        via_cache = model.model(**prompt, vision_features=from_disk).last_hidden_state[:, -1]
    assert torch.allclose(via_cache, plain, rtol=1e-5, atol=1e-6)


def test_cache_folder_is_named_by_the_model_weights(tiny_model_and_processor, tmp_path):
    model, processor = tiny_model_and_processor
    cache = VisionFeatureCache.for_model(model, processor.image_processor, tmp_path)
    assert cache.dir == tmp_path / "vision_features" / vision_model_key(model.model.vision_tower)
    assert cache.preprocessing == preprocessing_fingerprint(processor.image_processor)


def test_vision_features_need_the_towers_map_shape(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    with pytest.raises(ValueError, match="feature map"):
        model.model.get_image_features(vision_features=torch.zeros(1, 49, 1280))
    with pytest.raises(ValueError, match="exactly one"):
        model.model.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224), vision_features=torch.zeros(1, 1280, 7, 7))
