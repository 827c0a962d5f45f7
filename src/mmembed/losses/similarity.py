"""Similarity matrices in float32 whatever the surrounding autocast, and the mask of duplicate targets.

Under `bf16-mixed` (the default on GPUs and on CPUs with native bf16) autocast runs `q @ t.T` in bfloat16
even on float32 embeddings: about 3 significant digits. At tau 0.02 that moves the hard-negative loss by
~0.7%, and a strict `S[i, j] > S[i, p] + beta` comparison meets ties it would not meet in float32. Every
loss computes its scores here, with autocast off and the inputs cast up (float64 stays float64).
"""

from __future__ import annotations

import torch


def scores(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """query [B, D] @ candidates [N, D]^T in at least float32, autocast disabled; gradients flow as usual."""
    dtype = torch.promote_types(torch.promote_types(query.dtype, candidates.dtype), torch.float32)
    with torch.autocast(device_type=query.device.type, enabled=False):
        return query.to(dtype) @ candidates.to(dtype).T


def same_target(query_ids: torch.Tensor | None, candidate_ids: torch.Tensor | None) -> torch.Tensor | None:
    """[B, N] bool: candidate j carries the same target identity as query i's positive (None: no ids given).

    Identities are integers (e.g. a hash of the positive's text and image): two rows whose targets are the
    same string or image are one answer, so a copy of query i's positive is never one of its negatives."""
    if query_ids is None or candidate_ids is None:
        return None
    return query_ids.reshape(-1, 1) == candidate_ids.reshape(1, -1)
