"""UniME stage 2's hard-negative NCE (arXiv 2504.17432): filter false negatives, keep the k hardest.

For local query i (global positive index p = rank * B + i) and S = query @ all_targets^T over the
GLOBAL batch of targets (gathered with gradient, in rank order):
  0. duplicates: a target j != p with the same target identity as p (`target_ids`: the same text or image)
     is the positive itself, not a negative: it is never picked and never counted as a false negative
     (without ids, a copy has S[i, j] == S[i, p], survives the strict filter below and is picked first);
  1. false-negative filter: target j != p is dropped when S[i, j] > S[i, p] + beta (a "negative"
     that beats the positive by more than beta is most likely another valid answer);
  2. hard negatives: the k highest S[i, j] among the remaining j != p;
  3. loss_i = cross-entropy of [S[i, p], S[i, n_1], ..., S[i, n_k]] / tau with the positive at 0.
The selection (steps 1-2) runs under no_grad: it picks columns, the gradient flows through the picked
similarities only. When fewer than k negatives remain (a small global batch, or many filtered), the
missing columns are -inf logits, which add nothing to the softmax; `padded_fraction` reports it.
Embeddings are expected L2-normalised (beta is on the cosine scale; UniME: beta 0.1, k 8, tau 0.02).

Across devices the anchors stay local and every rank's targets are gathered with gradient
(`gather_with_grad`), including this rank's own shard: UniME's released loss gathers without gradient
and so drops the local shard's gradient; here the 2-process mean equals one process on the
concatenated batch, loss and gradients (tests/losses/test_hard_negative.py). A pure function of the
embeddings, so GradCache can wrap it (`lambda q, t: hard_negative_nce(q, t).loss`).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mmembed.errors import ConfigError
from mmembed.losses.gather import gather_no_grad, gather_with_grad, global_sum, rank_and_world
from mmembed.losses.similarity import same_target
from mmembed.losses.similarity import scores as similarity_scores


class HardNegativeOutput(NamedTuple):
    """The loss and, for logging, what the selection did on this rank's queries (detached).

    hard_negatives: [B, k] global target indices of the picked negatives, hardest first; -1 = padding.
    false_negative_fraction: share of local queries with at least one target filtered as a false negative.
    mean_false_negatives: targets filtered per local query.
    padded_fraction: share of local queries left with fewer than k negatives (padded with -inf logits).
    num_candidates: global targets each query was compared with (the positive included).
    mean_duplicates: targets per local query that are copies of its positive (same target id), left out.
    """

    loss: torch.Tensor
    hard_negatives: torch.Tensor
    false_negative_fraction: torch.Tensor
    mean_false_negatives: torch.Tensor
    padded_fraction: torch.Tensor
    num_candidates: int
    mean_duplicates: torch.Tensor | None = None


def hard_negative_nce(
    query: torch.Tensor,
    target: torch.Tensor,
    beta: float = 0.1,
    k: int = 8,
    tau: float = 0.02,
    group=None,
    valid: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    extra_valid: torch.Tensor | None = None,
    target_ids: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
) -> HardNegativeOutput:
    """Mean over local queries of the UniME stage-2 loss; query [B, D] and target [B, D] are local, row i paired.

    `extra` [M, D]: more candidates that are nobody's positive (a training file's mined `neg_*` targets),
    gathered from every rank after the targets. Masks keep every rank's shapes equal when inputs are
    missing: `valid` [B] bool drops query i and its target column (an unreadable image); `extra_valid` [M]
    drops extra columns (a row without a mined negative carries a placeholder). With `valid`, the loss is
    the sum over this rank's valid queries times W / (valid queries on all ranks), so DDP's gradient
    average is the mean over the global valid queries, as on one process. `target_ids` [B] / `extra_ids` [M]
    (int64 target identities, gathered from every rank) mark copies of a query's positive (step 0 above).
    Every rank must call it with the same B (and M) and run backward (the gathers are collectives).
    """
    if tau <= 0:
        raise ConfigError(f"hard-negative loss: tau must be > 0, got {tau}")
    if k < 1:
        raise ConfigError(f"hard-negative loss: k must be >= 1 hard negatives per query, got {k}")
    if query.dim() != 2 or query.shape != target.shape:
        raise ValueError(
            f"query and target must both be [B, D] with row i paired, got {tuple(query.shape)} and {tuple(target.shape)}"
        )
    rank, world = rank_and_world(group)
    all_targets = gather_with_grad(target, group)
    if extra is not None:
        all_targets = torch.cat([all_targets, gather_with_grad(extra, group)], dim=0)
    num_candidates = all_targets.shape[0]
    # float32 with autocast off, so the beta comparison and the 1/tau scaling do not suffer bf16 rounding
    scores = similarity_scores(query, all_targets)
    positive = torch.arange(query.shape[0], device=query.device) + rank * query.shape[0]
    positive_score = scores.gather(1, positive[:, None])

    with torch.no_grad():
        is_positive = F.one_hot(positive, num_candidates).bool()
        column_valid = _column_mask(valid, extra, extra_valid, query.shape[0], group, scores.device)
        duplicate = _duplicates(target_ids, extra_ids, extra, positive, group, scores) & ~is_positive
        false_negative = (scores > positive_score + beta) & ~is_positive & ~duplicate & column_valid[None]
        eligible = ~false_negative & ~is_positive & ~duplicate & column_valid[None]
        picked_k = min(k, num_candidates)  # topk cannot pick more columns than exist
        picked = scores.masked_fill(~eligible, float("-inf")).topk(picked_k, dim=1).indices
        picked_ok = eligible.gather(1, picked)
        if k > num_candidates - 1:
            warnings.warn(
                f"hard-negative loss: k={k} but the global batch has only {num_candidates - 1} negatives "
                "per query; the missing ones are padded (-inf logits)",
                stacklevel=2,
            )

    negatives = scores.gather(1, picked).masked_fill(~picked_ok, float("-inf"))
    padding = negatives.new_full((negatives.shape[0], k - picked_k), float("-inf"))
    logits = torch.cat([positive_score, negatives, padding], dim=1) / tau
    if valid is None:
        loss = F.cross_entropy(logits, torch.zeros_like(positive))
    else:
        rows = valid.to(logits.device).bool()
        total = global_sum(rows.sum(), group).clamp(min=1).to(logits.dtype)  # an int tensor would divide in float32
        loss = F.cross_entropy(logits[rows], torch.zeros_like(positive[rows]), reduction="sum") * (world / total)

    hard_negatives = torch.cat([picked.masked_fill(~picked_ok, -1), picked.new_full(padding.shape, -1)], dim=1)
    filtered = false_negative.sum(dim=1).to(scores.dtype)
    copies = (duplicate & column_valid[None]).sum(dim=1).to(scores.dtype)
    if valid is not None:  # statistics over the valid queries only
        rows = valid.to(scores.device).bool()
        filtered, hard_negatives, copies = filtered[rows], hard_negatives[rows], copies[rows]
    return HardNegativeOutput(
        loss=loss,
        hard_negatives=hard_negatives,
        false_negative_fraction=(filtered > 0).to(scores.dtype).mean(),
        mean_false_negatives=filtered.mean(),
        padded_fraction=(hard_negatives < 0).any(dim=1).to(scores.dtype).mean(),
        num_candidates=num_candidates,
        mean_duplicates=copies.mean(),
    )


def _duplicates(target_ids, extra_ids, extra, positive, group, scores) -> torch.Tensor:
    """[B, all candidates] bool: the column holds the same target identity as the row's positive."""
    if target_ids is None:
        return torch.zeros_like(scores, dtype=torch.bool)
    ids = gather_no_grad(target_ids.to(scores.device).long(), group)
    known = torch.ones_like(ids, dtype=torch.bool)
    if extra is not None:  # mined negatives without ids are never copies
        local = extra_ids if extra_ids is not None else torch.zeros(extra.shape[0], dtype=torch.long)
        gathered = gather_no_grad(local.to(scores.device).long(), group)
        ids = torch.cat([ids, gathered])
        known = torch.cat([known, torch.full_like(gathered, extra_ids is not None, dtype=torch.bool)])
    return same_target(ids[positive], ids) & known[None]


def _column_mask(valid, extra, extra_valid, batch: int, group, device) -> torch.Tensor:
    """[all candidates] bool: which gathered target / extra columns may be picked (under no_grad)."""
    def local(mask, n):
        if mask is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        if mask.shape != (n,):
            raise ValueError(f"mask of shape {tuple(mask.shape)} for {n} rows")
        return mask.to(device).bool()

    columns = [gather_no_grad(local(valid, batch), group)]
    if extra is not None:
        columns.append(gather_no_grad(local(extra_valid, extra.shape[0]), group))
    return torch.cat(columns)
