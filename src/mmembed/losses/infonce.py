"""In-batch InfoNCE with optional hard negatives: a pure function of embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    hard_negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query against all candidates [positives; hard negatives].

    query: [B, D] anchors; positive: [N, D] candidates, where query i's positive is row labels[i]
    (default: row i, the in-batch setting with N == B); hard_negative: [M, D] extra candidates
    (any number, SimCSE uses one per query). Inputs are expected L2-normalised, so the logits are
    cosine similarities / temperature (E5-V: tau = 0.05).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    candidates = positive if hard_negative is None else torch.cat([positive, hard_negative], dim=0)
    logits = query @ candidates.T / temperature
    if labels is None:
        if positive.shape[0] != query.shape[0]:
            raise ValueError("without labels, query and positive must have the same batch size")
        labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits.float(), labels)
