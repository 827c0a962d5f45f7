"""STSSpearman against scipy, with ties and DDP-style duplicated samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from mmembed.metrics.sts import STSSpearman, rankdata


def test_rankdata_matches_scipy_with_ties():
    from scipy.stats import rankdata as scipy_rank

    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    assert rankdata(x).tolist() == scipy_rank(x.numpy()).tolist() == [5.0, 1.5, 5.0, 3.0, 1.5, 5.0]


def test_matches_scipy_and_ignores_duplicates():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 8
    e1, e2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    gold = torch.randint(0, 6, (n,), generator=g).float()  # many ties
    ref = spearmanr(F.cosine_similarity(e1, e2).numpy(), gold.numpy()).statistic * 100

    metric = STSSpearman()
    metric.update(e1[:25] * 3.0, e2[:25], gold[:25], torch.arange(25))  # scale must not matter
    metric.update(e1[25:], e2[25:], gold[25:], torch.arange(25, n))
    # DDP padding: repeats of samples 0..4, with values that would change the result if counted
    metric.update(-e1[:5], e2[:5], gold[:5] + 10, torch.arange(5))
    assert metric.compute().item() == pytest.approx(ref, abs=1e-4)


def test_hand_computed():
    # cosines 1, 0, -1 (perfectly ordered) vs gold 5, 3, 0 -> rho = 1; reversed gold -> -1
    e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    e2 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    m = STSSpearman()
    m.update(e1, e2, torch.tensor([5.0, 3.0, 0.0]), torch.tensor([0, 1, 2]))
    assert m.compute().item() == pytest.approx(100.0)
    m.reset()
    m.update(e1, e2, torch.tensor([0.0, 3.0, 5.0]), torch.tensor([0, 1, 2]))
    assert m.compute().item() == pytest.approx(-100.0)


def test_shape_errors():
    m = STSSpearman()
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.arange(2))
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.arange(2))
