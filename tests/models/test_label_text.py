"""The label-text baseline: EfficientNet-Lite0's packaged ImageNet head names the images, MiniLM embeds the names."""

from __future__ import annotations

import pytest
import torch

from mmembed.data.images import load_image


@pytest.fixture(scope="module")
def label_text(data_root):
    from mmembed.models.label_text import LabelTextEmbedder

    return LabelTextEmbedder(data_root=str(data_root))


CLASSES = {"n01443537_goldfish.JPEG": "goldfish", "n01440764_tench.JPEG": "tench"}


def test_images_become_their_top3_class_names_and_are_embedded_as_that_text(label_text, data_root):
    images = [load_image(data_root / "imagenet_sample" / "images" / name) for name in CLASSES]
    texts = label_text.label_texts(images)
    for text, name in zip(texts, CLASSES.values()):
        assert text.startswith("a photo of ") and len(text[len("a photo of "):].split(", ")) == 3
        assert name in text  # the packaged head knows its own training classes
    # the image vector is exactly the text model's vector of that label text
    assert torch.allclose(label_text.encode_image(images), label_text.encode_text(texts), atol=1e-6)
    with pytest.raises(ValueError, match="plain images only"):
        label_text.encode_image(images, kind="cir_query")
