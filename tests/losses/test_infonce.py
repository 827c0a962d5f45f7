"""Single-process InfoNCE: the formula, labels, and cross_device falling back without a process group."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.losses import distributed_info_nce, gather_with_grad, info_nce, rank_and_world


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_info_nce_matches_hand_computed_softmax():
    q, p, n = _unit(4, 8, seed=0), _unit(4, 8, seed=1), _unit(4, 8, seed=2)
    tau = 0.05
    candidates = torch.cat([p, n])
    expected = 0.0
    for i in range(4):
        scores = [float(q[i] @ c) / tau for c in candidates]
        expected += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    assert info_nce(q, p, n, temperature=tau).item() == pytest.approx(expected / 4, rel=1e-9)


def test_info_nce_labels_select_positive_rows():
    q, p = _unit(2, 8, seed=3), _unit(5, 8, seed=4)
    labels = torch.tensor([4, 1])
    reordered = p[[4, 1, 0, 2, 3]]
    assert info_nce(q, p, labels=labels).item() == pytest.approx(info_nce(q, reordered, labels=torch.tensor([0, 1])).item(), rel=1e-12)
    with pytest.raises(ValueError):
        info_nce(q, p)  # 2 queries, 5 positives, no labels
    with pytest.raises(ValueError):
        info_nce(q, p[:2], temperature=0.0)


def test_cross_device_without_process_group_equals_local_loss():
    q, p, n = _unit(6, 8, seed=5), _unit(6, 8, seed=6), _unit(6, 8, seed=7)
    assert rank_and_world() == (0, 1)
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
    local = info_nce(q, p, n)
    assert info_nce(q, p, n, cross_device=True).item() == pytest.approx(local.item(), rel=1e-12)
    out = distributed_info_nce(q, p, n)
    assert out.loss.item() == pytest.approx(local.item(), rel=1e-12)
    assert (out.num_candidates, out.num_negatives) == (12, 11)
    assert distributed_info_nce(q, p).num_negatives == 5
