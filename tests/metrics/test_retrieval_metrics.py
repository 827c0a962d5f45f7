"""Retrieval metrics: chunked ranks equal a brute-force reference; duplicates by id are ignored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.metrics.ranking import best_positive_ranks
from mmembed.metrics.retrieval import ImageTextRecall, RetrievalRecall


def brute_force_recall(q, c, positives: list[set[int]], ks, exclude: list[set[int]] | None = None):
    """Full score matrix, full argsort, first positive position: the textbook definition."""
    scores = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    out = {}
    for k in ks:
        hits = 0
        for i in range(q.shape[0]):
            order = [j for j in scores[i].argsort(descending=True).tolist() if not exclude or j not in exclude[i]]
            hits += any(j in positives[i] for j in order[:k])
        out[k] = 100.0 * hits / q.shape[0]
    return out


def test_image_text_recall_matches_brute_force_both_directions():
    g = torch.Generator().manual_seed(1)
    n_img, per, d = 23, 5, 6
    img = torch.randn(n_img, d, generator=g)
    cap_img = torch.arange(n_img).repeat_interleave(per)
    txt = img[cap_img] + 1.5 * torch.randn(len(cap_img), d, generator=g)  # noisy: recall well below 100
    ks = (1, 5, 10)
    t2i = brute_force_recall(txt, img, [{int(i)} for i in cap_img], ks)
    i2t = brute_force_recall(img, txt, [set((cap_img == i).nonzero().view(-1).tolist()) for i in range(n_img)], ks)
    assert 0 < t2i[1] < 100 and 0 < i2t[1] < 100

    metric = ImageTextRecall(ks=ks, chunk_size=4)  # chunk smaller than the query count
    img_ids = torch.arange(n_img) + 1000  # ids need not be positions
    for s in range(0, n_img, 7):
        metric.update(image_emb=img[s : s + 7], image_ids=img_ids[s : s + 7])
    txt_ids = torch.arange(len(cap_img))
    metric.update(text_emb=txt[:60], text_ids=txt_ids[:60], text_image_ids=img_ids[cap_img[:60]])
    metric.update(text_emb=txt[60:], text_ids=txt_ids[60:], text_image_ids=img_ids[cap_img[60:]])
    # DDP padding repeats: contradicting copies of already-seen ids must be ignored
    metric.update(image_emb=-img[:3], image_ids=img_ids[:3])
    metric.update(text_emb=-txt[:4], text_ids=txt_ids[:4], text_image_ids=img_ids[cap_img[:4]])
    got = {k: v.item() for k, v in metric.compute().items()}
    for k in ks:
        assert got[f"t2i_R@{k}"] == pytest.approx(t2i[k], abs=1e-4)
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t[k], abs=1e-4)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_ranks_chunk_invariant_with_exclusion(chunk):
    g = torch.Generator().manual_seed(2)
    q, c = torch.randn(11, 4, generator=g), torch.randn(17, 4, generator=g)
    pos = torch.tensor([[i, (3 * i) % 17] for i in range(11)] + [[0, 5], [4, 16]])
    excl = torch.tensor([[i, (5 * i + 1) % 17] for i in range(11)])
    positives = [set() for _ in range(11)]
    for a, b in pos.tolist():
        positives[a].add(b)
    exclude = [{(5 * i + 1) % 17} for i in range(11)]
    ref = brute_force_recall(q, c, positives, (1, 2, 5), exclude)
    m = RetrievalRecall(ks=(1, 2, 5), chunk_size=chunk)
    m.update(queries=q, query_ids=torch.arange(11), candidates=c, candidate_ids=torch.arange(17), positives=pos)
    m.update(exclude=excl)
    got = m.compute()
    for k in (1, 2, 5):
        assert got[f"R@{k}"].item() == pytest.approx(ref[k], abs=1e-4)


def test_hand_computed_ranks_ties_and_missing_positive():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # candidates 0 and 2 tie
    # q0: positive c2, tied with c0 -> rank 0 (ties favour the query); q1: positive c0 -> scores (0,1,0): rank 1
    # q2: its only positive is excluded -> a miss (rank = N = 3)
    pos = torch.tensor([[0, 2], [1, 0], [2, 1]])
    ranks = best_positive_ranks(q, c, pos, exclude=torch.tensor([[2, 1]]), chunk_size=2)
    assert ranks.tolist() == [0, 1, 3]
    allowed = torch.tensor([[0, 2], [1, 0], [1, 2], [2, 0], [2, 1]])
    # restricted to {c0, c2}, q1's positive c0 ties with c2: rank 0; q2 scores 1 everywhere: rank 0
    assert best_positive_ranks(q, c, pos, allowed=allowed).tolist() == [0, 0, 0]
    # q0 restricted to {c2} only, q1 to {c1} (its positive c0 not allowed): a miss
    assert best_positive_ranks(q, c, pos, allowed=torch.tensor([[0, 2], [1, 1], [2, 1]])).tolist() == [0, 3, 0]


def test_scores_memory_bounded(monkeypatch):
    """Never more than chunk x N scores at once: watch every matmul shape."""
    shapes = []
    real = torch.Tensor.__matmul__

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    best_positive_ranks(torch.randn(50, 3), torch.randn(40, 3), torch.tensor([[0, 0]]), chunk_size=8)
    assert shapes and max(s[0] for s in shapes) <= 8
