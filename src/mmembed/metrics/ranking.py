"""Exact, memory-bounded ranking: where does a query's best positive rank among the candidates?

Scores are computed `chunk_size` queries at a time, so at most chunk_size x N scores exist at once.
Ties count in the query's favour: rank = number of candidates scoring strictly above its best positive.
"""

from __future__ import annotations

import torch

NO_PAIRS = torch.zeros(0, 2, dtype=torch.long)


def index_of(ids: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in `ids` (distinct) of each value in `wanted`, and a mask of the values found."""
    if ids.numel() == 0:
        return torch.zeros_like(wanted), torch.zeros_like(wanted, dtype=torch.bool)
    order = ids.argsort()
    sorted_ids = ids[order]
    pos = torch.searchsorted(sorted_ids, wanted.contiguous()).clamp(max=ids.numel() - 1)
    found = sorted_ids[pos] == wanted
    return order[pos], found


def pairs_to_index(pairs: torch.Tensor, query_ids: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
    """(query id, candidate id) pairs -> unique (query index, candidate index) pairs; unknown ids dropped."""
    if pairs.numel() == 0:
        return NO_PAIRS.to(query_ids.device)
    qi, qok = index_of(query_ids, pairs[:, 0])
    ci, cok = index_of(cand_ids, pairs[:, 1])
    keep = qok & cok
    return torch.unique(torch.stack([qi[keep], ci[keep]], dim=1), dim=0)


def _in_chunk(pairs: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    sel = (pairs[:, 0] >= start) & (pairs[:, 0] < end)
    return pairs[sel, 0] - start, pairs[sel, 1]


@torch.no_grad()
def best_positive_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    exclude: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """0-based rank of each query's best-scoring positive; `len(candidates)` when it has none.

    positives / exclude / allowed: [P, 2] (query index, candidate index) pairs. `exclude` removes
    candidates for a query (CIRR's reference image); `allowed`, when given, restricts every query to
    its listed candidates (CIRR's Recall_subset).
    """
    m, n = queries.shape[0], candidates.shape[0]
    ranks = torch.full((m,), n, dtype=torch.long, device=queries.device)
    cand_t = candidates.T
    for start in range(0, m, chunk_size):
        end = min(start + chunk_size, m)
        scores = queries[start:end] @ cand_t
        if allowed is not None:
            mask = torch.full_like(scores, float("-inf"))
            rows, cols = _in_chunk(allowed, start, end)
            mask[rows, cols] = 0.0
            scores = scores + mask
        if exclude is not None and exclude.numel():
            rows, cols = _in_chunk(exclude, start, end)
            scores[rows, cols] = float("-inf")
        rows, cols = _in_chunk(positives, start, end)
        best = torch.full((end - start,), float("-inf"), dtype=scores.dtype, device=scores.device)
        best.scatter_reduce_(0, rows, scores[rows, cols], reduce="amax")
        chunk_ranks = (scores > best[:, None]).sum(dim=1)
        chunk_ranks[best == float("-inf")] = n  # no reachable positive: a miss at every k
        ranks[start:end] = chunk_ranks
    return ranks


def recall_at(ranks: torch.Tensor, ks, prefix: str = "R@") -> dict[str, torch.Tensor]:
    """Percent of queries whose best positive ranks within the top k, for each k."""
    if ranks.numel() == 0:
        raise ValueError("no queries to score")
    return {f"{prefix}{k}": (ranks < k).double().mean().mul(100).float() for k in ks}
