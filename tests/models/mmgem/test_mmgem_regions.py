"""MM-GEM at region level on the tiny SmolLlava: pixel boxes through the processor's resize + centre crop,
region embeddings (h1 of the RoI-pooled region vector) and region caption prefixes (h2 of the RoI tokens)
against hand computations, and region captions equal to a greedy loop over the region-prefixed logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.errors import ConfigError, DataConfigError
from mmembed.inference.captioner import Captioner
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.mmgem.extension import MMGEMExtension, normalised_boxes, region_route
from mmembed.models.mmgem.region_boxes import processed_box
from mmembed.models.mmgem.roi_align import roi_align
from mmembed.models.prompts import PromptConfig
from tests.inference.test_captioner import greedy_by_hand

PROMPTS = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")


class _ClipLike:  # the default model's preprocessing: shortest edge -> 224, centre crop 224 x 224
    do_resize, do_center_crop = True, True
    size = {"shortest_edge": 224}
    crop_size = {"height": 224, "width": 224}


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(5)  # 40 wide x 48 high: resized to 224 x 268.8, 22.4 px cut off top and bottom
    return [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]


BOXES = [(0, 0, 40, 24), (10, 12, 30, 40)]
# by hand: x / 40; y: (y * 5.6 - 22.4) / 224, clipped to [0, 1]
NORMALISED = [(0.0, 0.0, 1.0, 0.5), (0.25, 0.2, 0.75, 0.9)]


@pytest.fixture(scope="module")
def mmgem(tiny_smol_llava_dir):
    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=PROMPTS,
                                        extension=MMGEMExtension()))
    torch.manual_seed(0)
    with torch.no_grad():  # move h1 / h2 off their init so a wrong route cannot match by accident
        for p in embedder.model.model.multi_modal_projector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return embedder.eval()


def test_pixel_boxes_follow_the_resize_and_centre_crop():
    for box, expected in zip(BOXES, NORMALISED):
        assert processed_box(box, (40, 48), _ClipLike()) == pytest.approx(expected, abs=1e-9)
    assert processed_box((0, 0, 100, 50), (100, 50), type("Squash", (), {"size": {"width": 8, "height": 8}})()) == (
        0.0, 0.0, 1.0, 1.0)
    with pytest.raises(DataConfigError, match="outside"):  # wholly in the cropped-off top strip
        processed_box((0, 0, 40, 3), (40, 48), _ClipLike())
    with pytest.raises(DataConfigError, match="x2 > x1"):
        processed_box((5, 5, 5, 9), (40, 48), _ClipLike())


def _fmap_and_rois(mmgem, images):
    pixels = mmgem.featurizer.featurize_images(images)["pixel_values"]
    norm = normalised_boxes(images, BOXES, mmgem.featurizer)
    assert torch.allclose(norm, torch.tensor(NORMALISED), atol=1e-6)
    with torch.no_grad():
        fmap = mmgem.model.model.vision_tower.forward_features(pixels)  # [2, C, 7, 7]
    boxes = torch.cat([torch.arange(2.0)[:, None], norm * 7], dim=1)  # feature-map coordinates
    return pixels, roi_align(fmap, boxes, 3, aligned=True)  # [2, C, 3, 3]


def test_region_embeddings_and_region_prefixes_equal_the_hand_computation(mmgem):
    images = _images()
    pixels, rois = _fmap_and_rois(mmgem, images)
    heads = mmgem.model.model.multi_modal_projector
    with torch.no_grad():
        expected_vectors = F.normalize(heads.h1(rois.mean(dim=(2, 3))), dim=-1)
        expected_prefix = heads.h2(rois.flatten(2).transpose(1, 2))  # [2, 9, D]
        got_vectors = mmgem.embed_regions(images, BOXES)
        with region_route(mmgem.model.model, normalised_boxes(images, BOXES, mmgem.featurizer)):
            got_prefix = mmgem.model.model.get_image_features(pixel_values=pixels)
        whole = mmgem.model.model.get_image_features(pixel_values=pixels)
    got_prefix = getattr(got_prefix, "pooler_output", got_prefix)
    whole = getattr(whole, "pooler_output", whole)
    assert torch.allclose(got_vectors, expected_vectors, atol=1e-5)
    assert torch.allclose(got_prefix, expected_prefix, atol=1e-5)
    assert not torch.allclose(whole, expected_prefix, atol=1e-3)  # outside the route: the whole image again


@pytest.mark.slow  # greedy generation against a step-by-step loop
def test_region_captions_equal_a_greedy_loop_over_the_region_prefixed_logits(mmgem):
    images, steps = _images(), 5
    got = Captioner(mmgem, instruction="<image>", max_new_tokens=steps).caption(images, batch_size=2, boxes=BOXES)
    for i, (image, caption) in enumerate(zip(images, got)):
        with region_route(mmgem.model.model, normalised_boxes([image], [BOXES[i]], mmgem.featurizer)):
            assert caption == greedy_by_hand(mmgem, image, steps)
    beams = Captioner(mmgem, instruction="<image>", max_new_tokens=steps, num_beams=2).caption(images, boxes=BOXES)
    assert len(beams) == 2
    with pytest.raises(ValueError, match="one box per image"):
        Captioner(mmgem, instruction="<image>").caption(images, boxes=BOXES[:1])


def test_region_captions_need_the_mmgem_heads(tiny_smol_llava_dir):
    plain = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir)))
    with pytest.raises(ConfigError, match="RoI pooling"):
        Captioner(plain).caption(_images(), boxes=BOXES)
