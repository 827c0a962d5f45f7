"""De-duplication by sample id: DDP validation samplers pad the last batch with repeated samples."""

from __future__ import annotations

import torch


def first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the first occurrence of each distinct id in `ids`."""
    ids = ids.reshape(-1)
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=ids.device)
    _, inverse = torch.unique(ids, return_inverse=True)
    n = int(inverse.max()) + 1
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((n,), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first.sort().values


def dedup(ids: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(`ids`, *`tensors`) restricted to the first row of every distinct id."""
    keep = first_occurrence(ids)
    return (ids.reshape(-1)[keep],) + tuple(t[keep] for t in tensors)


def cat_state(state) -> torch.Tensor:
    """A list state (before sync) or an already concatenated tensor (after sync) as one tensor."""
    if isinstance(state, torch.Tensor):
        return state
    if not state:
        return torch.zeros(0)
    return torch.cat([s if s.dim() else s.reshape(1) for s in state], dim=0)
