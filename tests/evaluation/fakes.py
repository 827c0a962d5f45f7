"""A deterministic stand-in embedder: images embed by their pixel colour, texts by a hash; calls are logged."""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from mmembed.models.prompts import PromptConfig, PromptRenderer

DIM = 16


def vec(key: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(DIM, generator=g)


class FakeEmbedder:
    """encode_image: vec(f"img{red}") (+ kind); encode_text: for "img<i> ..." texts vec(f"img{i}") plus noise."""

    def __init__(self, noise: float = 1.0):
        self.renderer = PromptRenderer(PromptConfig(chat_template=False), tokenizer=None)
        self.noise = noise
        self.calls = {"text": [], "image": [], "composed": []}

    def _img(self, image) -> torch.Tensor:
        return vec(f"img{image.getpixel((0, 0))[0]}")

    def encode_text(self, texts):
        self.calls["text"].extend(texts)
        out = []
        for t in texts:
            base = vec(t.split()[0]) if t.startswith("img") else torch.zeros(DIM)
            out.append(base + self.noise * vec(t))
        return F.normalize(torch.stack(out), dim=-1)

    def encode_image(self, images, kind="image", category=None):
        self.calls["image"].extend((img.getpixel((0, 0))[0], kind, category) for img in images)
        return F.normalize(torch.stack([self._img(i) for i in images]), dim=-1)

    def encode_composed(self, images, texts, kind="cir_query", category=None):
        self.calls["composed"].extend(zip((img.getpixel((0, 0))[0] for img in images), texts))
        # "->N" in the text points the query at image N
        out = [vec(f"img{t.split('->')[1].split()[0]}") + self.noise * vec(t) if "->" in t else self._img(i)
               for i, t in zip(images, texts)]
        return F.normalize(torch.stack(out), dim=-1)
