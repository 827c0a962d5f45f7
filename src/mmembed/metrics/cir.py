"""Composed image retrieval metrics: CIRR (reference removed; Recall@k and Recall_subset@k)."""

from __future__ import annotations

import torch

from mmembed.metrics.ranking import best_positive_ranks, pairs_to_index, recall_at
from mmembed.metrics.retrieval import _EmbeddingStore, _ids, _pairs


class CIRRRecall(_EmbeddingStore):
    """CIRR's protocol: the reference image is never a candidate. Recall@{1,5,10,50} over the whole
    gallery; Recall_subset@{1,2,3} over the query's `img_set` members (reference excluded); and
    "Avg" = (R@5 + Rsubset@1) / 2, CIRR's headline number."""

    def __init__(self, ks=(1, 5, 10, 50), subset_ks=(1, 2, 3), chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.subset_ks, self.chunk_size = tuple(ks), tuple(subset_ks), chunk_size
        self._add("q_emb", "q_ids", "c_emb", "c_ids", "pos", "ref", "members")

    def update(
        self,
        queries=None,
        query_ids=None,
        reference_ids=None,
        target_ids=None,
        members=None,
        candidates=None,
        candidate_ids=None,
    ):
        """reference_ids / target_ids: one candidate id per query; members: [M, 2] (query id, member id)."""
        if queries is not None:
            self._push_emb("q_emb", "q_ids", queries, query_ids)
            qid = _ids(query_ids)
            self._push("ref", torch.stack([qid, _ids(reference_ids)], dim=1))
            self._push("pos", torch.stack([qid, _ids(target_ids)], dim=1))
        if members is not None:
            self._push("members", _pairs(members))
        if candidates is not None:
            self._push_emb("c_emb", "c_ids", candidates, candidate_ids)

    def compute(self) -> dict[str, torch.Tensor]:
        q, qid = self._emb("q_emb", "q_ids")
        c, cid = self._emb("c_emb", "c_ids")
        pos = pairs_to_index(self._pair_state("pos"), qid, cid)
        ref = pairs_to_index(self._pair_state("ref"), qid, cid)
        out = recall_at(best_positive_ranks(q, c, pos, exclude=ref, chunk_size=self.chunk_size), self.ks)
        members = pairs_to_index(self._pair_state("members"), qid, cid)
        if members.numel():
            ranks = best_positive_ranks(q, c, pos, exclude=ref, allowed=members, chunk_size=self.chunk_size)
            out.update(recall_at(ranks, self.subset_ks, "Rsubset@"))
            if 5 in self.ks and 1 in self.subset_ks:
                out["Avg"] = (out["R@5"] + out["Rsubset@1"]) / 2
        return out
