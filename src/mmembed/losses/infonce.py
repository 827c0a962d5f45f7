"""In-batch InfoNCE with optional hard negatives, local or across devices: pure functions of embeddings."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mmembed.losses.gather import gather_no_grad, gather_with_grad, global_sum, rank_and_world
from mmembed.losses.similarity import same_target, scores


class InfoNCEOutput(NamedTuple):
    """The loss and how many candidates each query was scored against (for logging).

    num_candidates: columns of the logit matrix, i.e. global positives + global hard negatives.
    num_negatives: num_candidates - 1, the candidates per query that are not its labelled positive.
    """

    loss: torch.Tensor
    num_candidates: int
    num_negatives: int


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in at least float32 (bf16/fp16 logits are upcast, float64 stays float64)."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    hard_negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    labels: torch.Tensor | None = None,
    cross_device: bool = False,
    positive_ids: torch.Tensor | None = None,
    hard_negative_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query against all candidates [positives; hard negatives].

    query: [B, D] anchors; positive: [N, D] candidates, where query i's positive is row labels[i]
    (default: row i, the in-batch setting with N == B); hard_negative: [M, D] extra candidates
    (any number, SimCSE uses one per query). Inputs are expected L2-normalised, so the logits are
    cosine similarities / temperature (E5-V: tau = 0.05).

    cross_device=True scores the local queries against the candidates of *all* ranks (see
    `distributed_info_nce`); without an initialised process group it is the same as False.
    positive_ids [N] / hard_negative_ids [M]: target identities (e.g. a hash of the text or image); a
    candidate with the same identity as query i's positive is the same answer, not a negative, and is
    masked out of query i's row (without ids nothing is masked).
    """
    if cross_device:
        return distributed_info_nce(query, positive, hard_negative, temperature, labels,
                                    positive_ids=positive_ids, hard_negative_ids=hard_negative_ids).loss
    _check_temperature(temperature)
    candidates = positive if hard_negative is None else torch.cat([positive, hard_negative], dim=0)
    logits = scores(query, candidates) / temperature
    if labels is None:
        if positive.shape[0] != query.shape[0]:
            raise ValueError("without labels, query and positive must have the same batch size")
        labels = torch.arange(query.shape[0], device=query.device)
    logits = _mask_duplicates(logits, labels, positive_ids, hard_negative_ids, hard_negative)
    return _cross_entropy(logits, labels)


def _mask_duplicates(logits, labels, positive_ids, hard_negative_ids, hard_negative) -> torch.Tensor:
    """-inf where a column holds a copy of the row's own positive (same id), the labelled column excepted.

    positive_ids / hard_negative_ids are the (already gathered) ids of the logit columns, in column order."""
    if positive_ids is None:
        return logits
    ids = positive_ids.to(logits.device)
    known = torch.ones_like(ids, dtype=torch.bool)
    if hard_negative is not None:  # hard negatives without ids are never treated as copies
        extra = hard_negative_ids if hard_negative_ids is not None else torch.zeros(
            logits.shape[1] - ids.shape[0], dtype=ids.dtype, device=ids.device)
        known = torch.cat([known, torch.full_like(extra, hard_negative_ids is not None, dtype=torch.bool)])
        ids = torch.cat([ids, extra.to(ids.device)])
    duplicate = same_target(ids[labels], ids) & known[None]
    duplicate[torch.arange(labels.shape[0], device=labels.device), labels] = False
    return logits.masked_fill(duplicate, float("-inf"))


def distributed_info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    hard_negative: torch.Tensor | None = None,
    temperature: float = 0.05,
    labels: torch.Tensor | None = None,
    group=None,
    valid: torch.Tensor | None = None,
    hard_negative_valid: torch.Tensor | None = None,
    positive_ids: torch.Tensor | None = None,
    hard_negative_ids: torch.Tensor | None = None,
) -> InfoNCEOutput:
    """InfoNCE with anchors kept local and candidates gathered from every rank, with gradient.

    Gathered candidate matrix (rows of the logit columns), W = world size, r = rank:
        [positive_0; positive_1; ...; positive_{W-1}; hard_negative_0; ...; hard_negative_{W-1}]
    i.e. all positives in rank order, then all hard negatives in rank order: exactly the candidate
    matrix `info_nce` builds on one process from the concatenated batch
    (`cat(positive_r)`, `cat(hard_negative_r)`). Labels are offset into the global positives:
    local label l on rank r becomes r * N + l (N = local positives; default l = arange(B)), so
    labels must index positives, not hard negatives.

    Masks keep every rank's shapes equal (a collective needs them equal) when some inputs are missing:
    `hard_negative_valid` [M] bool drops hard-negative columns (a row without a hard negative carries a
    placeholder); `valid` [B] bool (in-batch setting, N == B) drops query i AND its positive column i
    (an unreadable image, a duplicate). With `valid`, the loss is the sum over this rank's valid queries
    times W / (valid queries on all ranks), so DDP's gradient average is the mean over the global valid
    queries, as on one process. `positive_ids` / `hard_negative_ids` (see `info_nce`) are gathered like the
    candidates, so a copy of a query's positive on another rank is masked as on one process.

    The returned loss is otherwise the mean over this rank's queries. With equal local batches, the mean
    of the ranks' losses equals the single-process loss on the concatenated batch, and DDP's gradient
    averaging (sum / W) gives the single-process gradients (all_gather's backward sums every rank's
    contribution back to the owner; tests/losses/test_distributed_infonce.py checks both).
    Every rank must call this with the same shapes (B, N, M) and the same masks given, and run backward.
    """
    _check_temperature(temperature)
    rank, world = rank_and_world(group)
    if labels is None:
        if positive.shape[0] != query.shape[0]:
            raise ValueError("without labels, query and positive must have the same batch size")
        labels = torch.arange(query.shape[0], device=query.device)
    all_positive = gather_with_grad(positive, group)
    candidates = all_positive
    if hard_negative is not None:
        candidates = torch.cat([all_positive, gather_with_grad(hard_negative, group)], dim=0)
    global_labels = labels + rank * positive.shape[0]
    logits = scores(query, candidates) / temperature
    if positive_ids is not None:
        with torch.no_grad():
            all_ids = gather_no_grad(positive_ids.to(logits.device), group)
            all_hard_ids = None if hard_negative_ids is None else gather_no_grad(hard_negative_ids.to(logits.device), group)
        logits = _mask_duplicates(logits, global_labels, all_ids, all_hard_ids, hard_negative)
    num_candidates = candidates.shape[0]
    if valid is None and hard_negative_valid is None:
        return InfoNCEOutput(_cross_entropy(logits, global_labels), num_candidates, num_candidates - 1)
    with torch.no_grad():
        columns = [gather_no_grad(_as_mask(valid, positive.shape[0], logits.device), group)]
        if hard_negative is not None:
            columns.append(gather_no_grad(_as_mask(hard_negative_valid, hard_negative.shape[0], logits.device), group))
        column_valid = torch.cat(columns)
    logits = logits.masked_fill(~column_valid[None], float("-inf"))
    usable = int(column_valid.sum())
    if valid is None:
        return InfoNCEOutput(_cross_entropy(logits, global_labels), usable, usable - 1)
    rows = valid.to(logits.device).bool()
    total = global_sum(rows.sum(), group).clamp(min=1)
    per_query = F.cross_entropy(logits[rows].to(torch.promote_types(logits.dtype, torch.float32)),
                                global_labels[rows], reduction="sum")
    return InfoNCEOutput(per_query * (world / total), usable, usable - 1)


def _as_mask(mask: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if mask.shape != (n,):
        raise ValueError(f"mask of shape {tuple(mask.shape)} for {n} rows")
    return mask.to(device).bool()
