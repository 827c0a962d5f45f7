"""Zero-shot classification accuracy: each image against one embedding per class (prompted class name)."""

from __future__ import annotations

import torch

from mmembed.metrics.ranking import best_positive_ranks, pairs_to_index, recall_at
from mmembed.metrics.retrieval import _EmbeddingStore, _ids


class ZeroShotAccuracy(_EmbeddingStore):
    """Top-k accuracy (percent): an image is right at k if its class is among its k most similar classes."""

    def __init__(self, ks=(1, 5), chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.chunk_size = tuple(ks), chunk_size
        self._add("img_emb", "img_ids", "cls_emb", "cls_ids", "labels")

    def update(self, image_emb=None, labels=None, ids=None, class_emb=None, class_ids=None):
        """Images with their labels (class ids) and sample ids; and/or the class embeddings with their ids."""
        if image_emb is not None:
            self._push_emb("img_emb", "img_ids", image_emb, ids)
            self._push("labels", torch.stack([_ids(ids), _ids(labels)], dim=1))
        if class_emb is not None:
            self._push_emb("cls_emb", "cls_ids", class_emb, class_ids)

    def compute(self) -> dict[str, torch.Tensor]:
        img, img_ids = self._emb("img_emb", "img_ids")
        cls, cls_ids = self._emb("cls_emb", "cls_ids")
        pos = pairs_to_index(self._pair_state("labels"), img_ids, cls_ids)
        ranks = best_positive_ranks(img, cls, pos, chunk_size=self.chunk_size)
        return recall_at(ranks, self.ks, "acc@")
