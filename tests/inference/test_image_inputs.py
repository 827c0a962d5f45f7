"""PIL images given to `Embedder.encode` go through the same loader as files: alpha composited on white,
16-bit greyscale scaled, unreadable inputs one error type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.errors import BadImageError
from tests.inference.conftest import noise_image


def test_rgba_pil_image_embeds_like_its_file_and_like_white_background(tiny_embedder, tmp_path):
    rgba = noise_image(3).convert("RGBA")
    alpha = np.zeros((rgba.height, rgba.width), dtype=np.uint8)
    alpha[:, : rgba.width // 2] = 255  # right half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    on_white = Image.new("RGB", rgba.size, "white")
    on_white.paste(rgba, mask=rgba.split()[3])
    from_pil = tiny_embedder.encode(images=[rgba])
    from_file = tiny_embedder.encode(images=[str(tmp_path / "rgba.png")])
    from_white = tiny_embedder.encode(images=[on_white])
    naive = tiny_embedder.encode(images=[rgba.convert("RGB")])  # PIL's own conversion drops alpha: black
    assert torch.allclose(from_pil, from_file, atol=1e-6) and torch.allclose(from_pil, from_white, atol=1e-6)
    assert (from_pil * naive).sum() < 0.9999


def test_16_bit_greyscale_pil_image_is_scaled_not_clipped(tiny_embedder):
    values = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    grey16 = Image.fromarray(values)
    assert grey16.mode.startswith("I;16")
    grey8 = Image.fromarray(np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)).convert("RGB")
    clipped = Image.fromarray(np.minimum(values, 255).astype(np.uint8)).convert("RGB")  # what clipping would see
    got = tiny_embedder.encode(images=[grey16])
    assert torch.allclose(got, tiny_embedder.encode(images=[grey8]), atol=1e-5)
    assert (got * tiny_embedder.encode(images=[clipped])).sum() < 0.999


def test_unreadable_image_file_is_a_bad_image_error(tiny_embedder, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(BadImageError, match="broken.jpg"):
        tiny_embedder.encode(images=[str(tmp_path / "broken.jpg")])
