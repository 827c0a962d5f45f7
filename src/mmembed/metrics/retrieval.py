"""Retrieval recall metrics: generic query -> candidates Recall@k, and image<->text in both directions.

Embeddings are L2-normalised before scoring; every query, candidate and pair is counted once per id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from mmembed.metrics.dedup import cat_state, dedup
from mmembed.metrics.ranking import NO_PAIRS, best_positive_ranks, pairs_to_index, recall_at


def _ids(x) -> torch.Tensor:
    return torch.as_tensor(x).reshape(-1).long()


def _pairs(x) -> torch.Tensor:
    return torch.as_tensor(x).reshape(-1, 2).long()


class _EmbeddingStore(Metric):
    """Shared plumbing: list states gathered with 'cat', then de-duplicated by id."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def _add(self, *names: str) -> None:
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _push(self, name: str, value: torch.Tensor) -> None:
        getattr(self, name).append(value.to(self.device))

    def _push_emb(self, emb_name: str, ids_name: str, emb, ids) -> None:
        emb, ids = emb.detach().float(), _ids(ids)
        if emb.dim() != 2 or emb.shape[0] != ids.numel():
            raise ValueError(f"{emb_name}: expected [B, D] embeddings and B ids, got {tuple(emb.shape)}, {ids.numel()}")
        self._push(emb_name, F.normalize(emb, dim=-1))
        self._push(ids_name, ids)

    def _emb(self, emb_name: str, ids_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, emb = dedup(cat_state(getattr(self, ids_name)).long(), cat_state(getattr(self, emb_name)))
        if ids.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no {emb_name} were given")
        return emb, ids

    def _pair_state(self, name: str) -> torch.Tensor:
        state = getattr(self, name)
        return cat_state(state).reshape(-1, 2).long() if len(state) else NO_PAIRS.to(self.device)


class RetrievalRecall(_EmbeddingStore):
    """Recall@k (percent) of queries against one candidate pool; a query hits if any positive is in its top k.

    `update` takes any subset of: queries + query_ids, candidates + candidate_ids, positives
    ([P, 2] (query id, candidate id)), exclude ([E, 2] pairs removed from ranking).
    """

    def __init__(self, ks=(1, 5, 10), chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.chunk_size = tuple(ks), chunk_size
        self._add("q_emb", "q_ids", "c_emb", "c_ids", "pos", "excl")

    def update(self, queries=None, query_ids=None, candidates=None, candidate_ids=None, positives=None, exclude=None):
        if queries is not None:
            self._push_emb("q_emb", "q_ids", queries, query_ids)
        if candidates is not None:
            self._push_emb("c_emb", "c_ids", candidates, candidate_ids)
        if positives is not None:
            self._push("pos", _pairs(positives))
        if exclude is not None:
            self._push("excl", _pairs(exclude))

    def ranks(self) -> torch.Tensor:
        q, qid = self._emb("q_emb", "q_ids")
        c, cid = self._emb("c_emb", "c_ids")
        pos = pairs_to_index(self._pair_state("pos"), qid, cid)
        excl = pairs_to_index(self._pair_state("excl"), qid, cid)
        return best_positive_ranks(q, c, pos, excl, chunk_size=self.chunk_size)

    def compute(self) -> dict[str, torch.Tensor]:
        return recall_at(self.ranks(), self.ks)


class ImageTextRecall(_EmbeddingStore):
    """E5-V's image-text retrieval: text->image and image->text Recall@k with several captions per image."""

    def __init__(self, ks=(1, 5, 10), chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.chunk_size = tuple(ks), chunk_size
        self._add("img_emb", "img_ids", "txt_emb", "txt_ids", "txt_img")

    def update(self, image_emb=None, image_ids=None, text_emb=None, text_ids=None, text_image_ids=None):
        """`text_image_ids[j]`: the id of the image that text j describes."""
        if image_emb is not None:
            self._push_emb("img_emb", "img_ids", image_emb, image_ids)
        if text_emb is not None:
            if text_image_ids is None:
                raise ValueError("texts need text_image_ids (the image each text describes)")
            self._push_emb("txt_emb", "txt_ids", text_emb, text_ids)
            self._push("txt_img", torch.stack([_ids(text_ids), _ids(text_image_ids)], dim=1))

    def compute(self) -> dict[str, torch.Tensor]:
        img, img_ids = self._emb("img_emb", "img_ids")
        txt, txt_ids = self._emb("txt_emb", "txt_ids")
        pairs = pairs_to_index(self._pair_state("txt_img"), txt_ids, img_ids)  # (text index, image index)
        t2i = best_positive_ranks(txt, img, pairs, chunk_size=self.chunk_size)
        i2t = best_positive_ranks(img, txt, pairs.flip(1), chunk_size=self.chunk_size)
        return {**recall_at(t2i, self.ks, "t2i_R@"), **recall_at(i2t, self.ks, "i2t_R@")}
