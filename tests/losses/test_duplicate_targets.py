"""Identical targets are never negatives, and similarities are float32 under bf16 autocast.

Brute force: a batch where query 0's positive text appears twice (rows 0 and 3). With target ids, the loss
equals the one computed by hand with the copy's column removed from query 0's row (and only from that row);
without ids, the hard-negative loss picks the copy as query 0's hardest negative (the bug it fixes). Across 2
gloo processes, a copy that sits on the other rank is masked exactly as on one process.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses.distillation import relational_kl
from mmembed.losses.hard_negative import hard_negative_nce
from mmembed.losses.infonce import distributed_info_nce, info_nce
from mmembed.losses.similarity import scores
from tests.losses.helpers import run_distributed

TAU = 0.05


def _batch(seed: int = 0, n: int = 6, d: int = 8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    t = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    t[3] = t[0]  # row 3's target is row 0's target (the same caption / the same "yes")
    q[0] = F.normalize(t[0] + 0.3 * q[0], dim=0)  # queries 0 and 3 are closest to their (shared) positive
    q[3] = F.normalize(t[0] + 0.3 * q[3], dim=0)
    ids = torch.tensor([10, 11, 12, 10, 14, 15])
    return q, t, ids


def test_info_nce_masks_the_copy_of_each_querys_positive_only_in_its_own_row():
    q, t, ids = _batch()
    s = q @ t.T / TAU
    by_hand = []
    for i in range(len(q)):
        keep = [j for j in range(len(t)) if j == i or ids[j] != ids[i]]
        row = s[i, keep]
        by_hand.append(-(row[keep.index(i)] - torch.logsumexp(row, 0)))
    expected = torch.stack(by_hand).mean()
    assert info_nce(q, t, temperature=TAU, positive_ids=ids).item() == pytest.approx(expected.item(), abs=1e-12)
    # rows 0 and 3 lost one column each; without ids the loss is the plain one, and differs
    plain = F.cross_entropy(s, torch.arange(len(q)))
    assert info_nce(q, t, temperature=TAU).item() == pytest.approx(plain.item(), abs=1e-12)
    assert abs(plain.item() - expected.item()) > 1e-3


def test_info_nce_hard_negative_ids_mask_a_hard_negative_that_is_the_positive():
    q, t, ids = _batch()
    hard = t[[1, 2]].clone()  # hard negative 0 is query 1's own positive text
    hard_ids = torch.tensor([11, 99])
    s = q @ torch.cat([t, hard]).T / TAU
    all_ids = torch.cat([ids, hard_ids])
    s_masked = s.clone()
    for i in range(len(q)):
        for j in range(s.shape[1]):
            if j != i and all_ids[j] == ids[i]:
                s_masked[i, j] = -math.inf
    expected = F.cross_entropy(s_masked, torch.arange(len(q)))
    got = info_nce(q, t, hard, temperature=TAU, positive_ids=ids, hard_negative_ids=hard_ids)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


def test_hard_negative_never_picks_a_copy_of_the_positive():
    q, t, ids = _batch()
    without = hard_negative_nce(q, t, beta=0.1, k=2, tau=0.02)
    # the copy has S[0, 3] == S[0, 0], the row's maximum: not filtered by the strict '>', picked first
    assert int(without.hard_negatives[0, 0]) == 3 and int(without.hard_negatives[3, 0]) == 0
    out = hard_negative_nce(q, t, beta=0.1, k=2, tau=0.02, target_ids=ids)
    assert 3 not in out.hard_negatives[0].tolist() and 0 not in out.hard_negatives[3].tolist()
    assert out.mean_duplicates.item() == pytest.approx(2 / 6)
    # brute force: drop the copy's column from rows 0 and 3, apply the paper's rule on what is left
    s = (q @ t.T).double()
    losses = []
    for i in range(len(q)):
        cols = [j for j in range(len(t)) if j != i and ids[j] != ids[i] and not s[i, j] > s[i, i] + 0.1]
        hardest = sorted(cols, key=lambda j: -s[i, j].item())[:2]
        picked = [j for j in out.hard_negatives[i].tolist() if j >= 0]  # -1: padding
        # identical columns (rows 0 and 3 for the other queries) tie: compare the picked scores, not indices
        assert s[i, picked].tolist() == s[i, hardest].tolist() and ids[i] not in ids[picked].tolist()
        logits = torch.cat([s[i, [i]], s[i, hardest]]) / 0.02
        losses.append(-(logits[0] - torch.logsumexp(logits, 0)))
    assert out.loss.item() == pytest.approx(torch.stack(losses).mean().item(), abs=1e-10)


def test_scores_are_float32_under_bf16_autocast_and_losses_match_float32():
    q, t, ids = _batch(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (q @ t.T).dtype == torch.bfloat16  # what the losses used to compute their logits in
        assert scores(q, t).dtype == torch.float32
        auto = [info_nce(q, t, temperature=TAU, positive_ids=ids),
                hard_negative_nce(q, t, beta=0.1, k=2, tau=0.02, target_ids=ids).loss,
                relational_kl(q, t, tau=TAU)]
    plain = [info_nce(q, t, temperature=TAU, positive_ids=ids),
             hard_negative_nce(q, t, beta=0.1, k=2, tau=0.02, target_ids=ids).loss,
             relational_kl(q, t, tau=TAU)]
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32 and a.item() == b.item()


def _worker(rank: int, world: int) -> dict:
    q, t, ids = _batch()
    half = slice(rank * 3, rank * 3 + 3)  # the copy (row 3) sits on rank 1, its original (row 0) on rank 0
    out = {"infonce": distributed_info_nce(q[half], t[half], temperature=TAU, positive_ids=ids[half]).loss.item()}
    hn = hard_negative_nce(q[half], t[half], beta=0.1, k=2, tau=0.02, target_ids=ids[half])
    out["hard"], out["picked"] = hn.loss.item(), hn.hard_negatives
    return out


@pytest.mark.distributed
def test_a_copy_on_another_rank_is_masked_as_on_one_process(tmp_path):
    ranks = run_distributed(_worker, tmp_path)
    q, t, ids = _batch()
    single = info_nce(q, t, temperature=TAU, positive_ids=ids).item()
    assert sum(r["infonce"] for r in ranks) / 2 == pytest.approx(single, abs=1e-12)
    hn = hard_negative_nce(q, t, beta=0.1, k=2, tau=0.02, target_ids=ids)
    assert sum(r["hard"] for r in ranks) / 2 == pytest.approx(hn.loss.item(), abs=1e-10)
    assert torch.equal(torch.cat([r["picked"] for r in ranks]), hn.hard_negatives)
