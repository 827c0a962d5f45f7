"""Fixtures for the inference tests: the tiny SmolLlava wrapped in an Embedder, small images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_dir(tiny_smol_llava_dir):
    """The tiny SmolLlava (its vision tower has variance-preserving random weights: images differ)."""
    return tiny_smol_llava_dir


@pytest.fixture(scope="session")
def tiny_embedder(tiny_dir):
    from mmembed.inference import Embedder

    return Embedder.from_pretrained(tiny_dir)


def noise_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Five visibly different images (noise of different sizes, one solid colour) as files."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(4):
        noise_image(i, size=(40 + 16 * i, 56 - 4 * i)).save(folder / f"img{i}.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "red.jpg")
    return folder


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_dir, tmp_path_factory):
    """A saved LoRA adapter for the tiny model, with random (non-zero) lora_B so it changes outputs."""
    import torch

    from mmembed.models.backbones import load_backbone
    from mmembed.models.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(load_backbone(str(tiny_dir)).model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out
