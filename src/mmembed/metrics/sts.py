"""STS protocol: Spearman correlation (x 100) between embedding cosine similarity and gold scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from mmembed.metrics.dedup import cat_state, dedup


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata's 'average')."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho (float64) of two 1-D tensors; NaN when either side is constant."""
    ra, rb = rankdata(a.reshape(-1)), rankdata(b.reshape(-1))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm())


class STSSpearman(Metric):
    """Spearman x 100 of cos(emb1, emb2) against gold scores, each sample id counted once.

    `update` stores only the cosine similarity per pair (memory is O(pairs), not O(pairs x dim)).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("sims", default=[], dist_reduce_fx="cat")
        self.add_state("gold", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, emb1: torch.Tensor, emb2: torch.Tensor, gold: torch.Tensor, ids: torch.Tensor) -> None:
        if emb1.shape != emb2.shape or emb1.dim() != 2:
            raise ValueError(f"emb1 and emb2 must both be [B, D]; got {tuple(emb1.shape)} and {tuple(emb2.shape)}")
        gold = torch.as_tensor(gold, device=emb1.device).reshape(-1)
        ids = torch.as_tensor(ids, device=emb1.device).reshape(-1).long()
        if not emb1.shape[0] == gold.numel() == ids.numel():
            raise ValueError(f"{emb1.shape[0]} pairs, {gold.numel()} gold scores, {ids.numel()} ids")
        sims = (F.normalize(emb1.detach().double(), dim=-1) * F.normalize(emb2.detach().double(), dim=-1)).sum(-1)
        self.sims.append(sims)
        self.gold.append(gold.double())
        self.ids.append(ids)

    def compute(self) -> torch.Tensor:
        ids, sims, gold = dedup(cat_state(self.ids).long(), cat_state(self.sims), cat_state(self.gold))
        if ids.numel() < 2:
            raise ValueError(f"STSSpearman needs at least 2 distinct pairs, got {ids.numel()}")
        self.num_pairs = int(ids.numel())  # after de-duplication: what the number was computed on
        return (spearman(sims, gold) * 100).float()
