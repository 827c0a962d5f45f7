"""CIRR recall (reference removed, subset recall) and zero-shot accuracy, hand computed."""

from __future__ import annotations

import pytest
import torch

from mmembed.metrics.cir import CIRRRecall
from mmembed.metrics.zeroshot import ZeroShotAccuracy


def onehot(i, d=8, w=1.0):
    v = torch.zeros(d)
    v[i] = w
    return v


def test_cirr_reference_removed_and_subset():
    # candidates 0..5 are one-hot axes; a query's score for candidate j is its j-th coordinate
    cands = torch.stack([onehot(j) for j in range(6)])
    q0 = torch.tensor([9.0, 1, 8, 7, 0, 0, 0, 0])  # reference 0 scores highest; target 3 ranks 3rd overall
    q1 = torch.tensor([0.0, 5, 1, 4, 6, 0, 0, 0])  # target 1 ranks 2nd (after 4)
    m = CIRRRecall(ks=(1, 2, 5, 50), subset_ks=(1, 2, 3))
    m.update(candidates=cands, candidate_ids=torch.arange(6) + 10)
    m.update(
        queries=torch.stack([q0, q1]),
        query_ids=torch.tensor([100, 101]),
        reference_ids=torch.tensor([10, 15]),
        target_ids=torch.tensor([13, 11]),
        # img_set members include the reference; q0's subset {0, 1, 3}: without ref, 3 ranks 1st
        members=torch.tensor([[100, 10], [100, 11], [100, 13], [101, 11], [101, 14], [101, 15]]),
    )
    # without excluding the reference q0's target would be 3rd; excluded -> 2nd (after candidate 2)
    out = {k: v.item() for k, v in m.compute().items()}
    assert out["R@1"] == 0.0
    assert out["R@2"] == 100.0
    assert out["Rsubset@1"] == 50.0  # q0: target first among {1, 3}; q1: 4 beats 1
    assert out["Rsubset@2"] == 100.0
    # a repeated (padded) copy of q0 that would be a hit everywhere changes nothing
    m.update(queries=onehot(3).view(1, -1), query_ids=torch.tensor([100]), reference_ids=[10], target_ids=[13])
    assert {k: v.item() for k, v in m.compute().items()} == out


def test_cirr_without_members_reports_recall_only():
    m = CIRRRecall(ks=(1,))
    m.update(candidates=torch.eye(3), candidate_ids=torch.arange(3))
    m.update(queries=torch.tensor([[1.0, 0.5, 0]]), query_ids=[0], reference_ids=[0], target_ids=[1])
    assert {k: v.item() for k, v in m.compute().items()} == {"R@1": 100.0}


def test_zero_shot_accuracy_hand_computed():
    classes = torch.eye(4)
    images = torch.tensor([[1.0, 0.2, 0, 0], [0.9, 1.0, 0.1, 0], [0, 0.5, 0.4, 0.3], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([0, 0, 3, 3])  # ranks: 0, 1, 2, 0
    m = ZeroShotAccuracy(ks=(1, 2, 3))
    m.update(class_emb=classes, class_ids=torch.arange(4))
    m.update(image_emb=images, labels=labels, ids=torch.arange(4))
    m.update(image_emb=images[:1], labels=torch.tensor([3]), ids=torch.tensor([0]))  # duplicate id, ignored
    out = {k: v.item() for k, v in m.compute().items()}
    assert out == {"acc@1": 50.0, "acc@2": 75.0, "acc@3": 100.0}


def test_empty_metric_raises():
    with pytest.raises(ValueError):
        ZeroShotAccuracy().compute()
