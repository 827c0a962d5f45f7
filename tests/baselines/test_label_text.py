"""The label-text baseline: EfficientNet-Lite0's packaged ImageNet head names the images, MiniLM embeds the names."""

from __future__ import annotations

import pytest
import torch

from mmembed.data.images import load_image


@pytest.fixture(scope="module")
def label_text(data_root):
    from mmembed.baselines.label_text import LabelTextEmbedder

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


def test_the_llm_variant_embeds_the_same_label_texts_with_the_llm_text_path(tiny_smol_llava_dir, data_root):
    from mmembed.baselines.label_text import LLMLabelTextEmbedder, TowerLabeller
    from mmembed.inference import Embedder

    model = LLMLabelTextEmbedder(model=str(tiny_smol_llava_dir), dtype="float32", data_root=str(data_root))
    images = [load_image(data_root / "imagenet_sample" / "images" / name) for name in CLASSES]
    texts = model.label_texts(images)
    assert texts == TowerLabeller(data_root=str(data_root))(images)
    llm = Embedder.from_pretrained(str(tiny_smol_llava_dir), dtype="float32", text_only=True)
    assert torch.allclose(model.encode_image(images), llm.encode_text(texts), atol=1e-5)
    assert not hasattr(model, "encode")  # the evaluation runner calls encode_text / encode_image on it
