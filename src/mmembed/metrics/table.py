"""An embedding table gathered across devices: (id, embedding) rows from every rank, one row per id."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from mmembed.metrics.dedup import cat_state, dedup


class EmbeddingTable(Metric):
    """`update(ids, emb)` on each rank; `compute()` -> (ids, embeddings) of every rank, each id once (DDP's
    DistributedSampler pads the last batch with repeated samples). Uneven row counts per rank are fine."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("ids", default=[], dist_reduce_fx="cat")
        self.add_state("emb", default=[], dist_reduce_fx="cat")

    def update(self, ids: torch.Tensor, emb: torch.Tensor) -> None:
        ids = torch.as_tensor(ids, device=self.device).reshape(-1).long()
        if emb.dim() != 2 or emb.shape[0] != ids.numel():
            raise ValueError(f"expected [B, D] embeddings and B ids, got {tuple(emb.shape)} and {ids.numel()}")
        self.ids.append(ids)
        self.emb.append(emb.detach().float().to(self.device))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, emb = cat_state(self.ids).long(), cat_state(self.emb)
        if ids.numel() == 0:
            return ids, emb.reshape(0, 0)
        return dedup(ids, emb)
