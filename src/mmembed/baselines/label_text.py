"""The label-text baseline: an image is the text of what its classifier recognises.

EfficientNet-Lite0 (the default model's vision tower, with its packaged ImageNet head) names each
image's top-k classes, written "a photo of X, Y, Z"; a sentence-transformers text model (all-MiniLM-L6-v2
by default) embeds that text and the captions alike. No training and no image-text data: it shows how much
of the tower's knowledge survives as plain words, the anchor the trained image paths are measured
against (Flickr8k 1k test retrieval, long-text retrieval). The tower was trained on ImageNet labels, so
ImageNet zero-shot numbers of this model are not zero-shot.

`LLMLabelTextEmbedder` embeds the same label texts with an MLLM's own text path (the default model's
prompted last token, optionally with a trained adapter): how much of the tower's knowledge the LLM's
embedding space can carry as words, i.e. the ceiling of an image path that only names classes to the LLM
(the grounded projector's idea) before any image-text training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmembed.baselines.text import SentenceTransformerTextEmbedder


class TowerLabeller:
    """Images -> "a photo of X, Y, Z": EfficientNet-Lite0's packaged head's top-k ImageNet classes."""

    def __init__(self, top_k: int = 3, template: str = "a photo of {}", data_root: str | None = None):
        from mmembed.models.smol_llava.assembly import imagenet_class_names
        from mmembed.models.smol_llava.processor import build_image_processor
        from mmembed.models.smol_llava.tower import load_packaged_efficientnet_lite0

        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        self.top_k, self.template = int(top_k), template
        self.classifier = load_packaged_efficientnet_lite0(with_classifier=True)
        self.class_names = imagenet_class_names(data_root)
        self.image_processor = build_image_processor()  # the default model's: 224 px bicubic centre crop

    @torch.inference_mode()
    def __call__(self, images: Sequence) -> list[str]:
        """The label text of each image, most probable class first."""
        pixels = self.image_processor(list(images), return_tensors="pt")["pixel_values"]
        top = self.classifier(pixels).topk(self.top_k, dim=-1).indices
        return [self.template.format(", ".join(self.class_names[i] for i in row)) for row in top.tolist()]


def _check_plain_images(kind: str) -> None:
    if kind not in ("image", "cir_target", "fiq_target"):
        raise ValueError(f"the label-text baseline embeds plain images only, not {kind!r} inputs")


class LabelTextEmbedder(SentenceTransformerTextEmbedder):
    """`encode_text` as the text model; `encode_image(images)` = encode_text(label_texts(images))."""

    modalities = frozenset({"text", "image"})

    def __init__(self, folder: str | None = None, top_k: int = 3, template: str = "a photo of {}",
                 max_length: int | None = None, data_root: str | None = None):
        super().__init__(folder, max_length=max_length)
        self.labeller = TowerLabeller(top_k, template, data_root)

    def label_texts(self, images: Sequence) -> list[str]:
        return self.labeller(images)

    def encode_image(self, images: Sequence, kind: str = "image", category: str | None = None) -> torch.Tensor:
        _check_plain_images(kind)
        return self.encode_text(self.label_texts(images))


class LLMLabelTextEmbedder(nn.Module):
    """The label texts and the captions both through an MLLM's text path (`Embedder.encode_text`).

    It has no `encode` method on purpose: the evaluation runner then calls encode_text / encode_image.
    """

    modalities = frozenset({"text", "image"})

    def __init__(self, model: str = "default", adapter: str | None = None, dtype: str = "auto", top_k: int = 3,
                 template: str = "a photo of {}", data_root: str | None = None):
        super().__init__()
        from mmembed.inference import Embedder

        self.name_or_path = f"label-text-{model}"
        self.text_model = Embedder.from_pretrained(model, adapter=adapter, dtype=dtype, text_only=True)
        self.labeller = TowerLabeller(top_k, template, data_root)

    def label_texts(self, images: Sequence) -> list[str]:
        return self.labeller(images)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_model.encode_text(list(texts))

    def encode_image(self, images: Sequence, kind: str = "image", category: str | None = None) -> torch.Tensor:
        _check_plain_images(kind)
        return self.encode_text(self.label_texts(images))
