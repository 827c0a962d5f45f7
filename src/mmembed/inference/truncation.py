"""Matryoshka truncation at inference: keep an embedding's first d coordinates and L2-renormalise them.

A model trained with objectives/matryoshka.py makes those first d coordinates an embedding of their own
(sentence-transformers calls the setting `truncate_dim`); vectors and FAISS indexes shrink by full/d.
"""

from __future__ import annotations

import torch

from mmembed.errors import ConfigError


def check_truncate_dim(truncate_dim: int | None, full_dim: int) -> int | None:
    """`truncate_dim` as an int (None: keep all `full_dim` coordinates); a size outside 1..full_dim is an error."""
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 1 <= truncate_dim <= full_dim:
        raise ConfigError(f"truncate_dim={truncate_dim!r}: expected an integer from 1 to the model's embedding "
                          f"size {full_dim} (or null for all of it)")
    return truncate_dim


def truncate(vectors: torch.Tensor, truncate_dim: int | None) -> torch.Tensor:
    """[..., D] -> [..., truncate_dim]: the first coordinates, divided by their L2 norm (None: unchanged)."""
    if truncate_dim is None or truncate_dim == vectors.shape[-1]:
        return vectors
    head = vectors[..., :truncate_dim]
    # clamp: an all-zero head (possible only for untrained or degenerate vectors) stays zero instead of NaN
    return head / head.norm(dim=-1, keepdim=True).clamp_min(1e-12)
