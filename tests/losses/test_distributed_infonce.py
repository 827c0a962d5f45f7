"""Cross-device InfoNCE on 2 gloo CPU processes equals one process on the concatenated batch.

DESIGN rule 3. Each rank holds half of a global batch of 8 (queries, positives, hard negatives),
embeds it with an identical seeded float64 MLP, computes the loss with its anchors local and the
candidates gathered from both ranks, and backpropagates; the parent then averages losses and
gradients over ranks (what DDP does) and compares with the single-process loss and gradients.
Tolerance: atol 1e-10 in float64 (observed differences are ~1e-16). The same run with a gather
*without* gradient (plain `dist.all_gather`) must give different gradients, so the check can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mmembed.losses import distributed_info_nce, info_nce
from tests.losses.helpers import TinyEncoder, grads_of, make_groups, max_abs_diff, run_distributed

pytestmark = pytest.mark.distributed

ATOL = 1e-10


def _gather_without_grad(x: torch.Tensor) -> torch.Tensor:
    """The classic mistake: plain all_gather (no autograd) with only the local slice keeping its graph."""
    rank, world = dist.get_rank(), dist.get_world_size()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x
    return torch.cat(parts)


def _no_grad_gather_loss(q, p, n, tau=0.05):
    candidates = torch.cat([_gather_without_grad(p), _gather_without_grad(n)])
    labels = torch.arange(q.shape[0]) + dist.get_rank() * p.shape[0]
    return torch.nn.functional.cross_entropy(q @ candidates.T / tau, labels)


def _mean_grads_over_ranks(model) -> dict[str, torch.Tensor]:
    for p in model.parameters():  # DDP-style: sum, then divide by world size
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    return grads_of(model)


def _worker(rank: int, world: int) -> dict:
    out = {}
    local = [g.chunk(world)[rank] for g in make_groups()]
    for name in ("with_grad", "without_grad"):
        model = TinyEncoder()
        q, p, n = (model(x) for x in local)
        if name == "with_grad":
            res = distributed_info_nce(q, p, n)
            loss = res.loss
            out["num_candidates"], out["num_negatives"] = res.num_candidates, res.num_negatives
        else:
            loss = _no_grad_gather_loss(q, p, n)
        loss.backward()
        out[f"loss_{name}"] = loss.item()
        out[f"grads_{name}"] = _mean_grads_over_ranks(model)

    # labels with several positives per query: 2 queries, 4 positives per rank, query i -> labels[i]
    model = TinyEncoder()
    qx, px = make_groups(batch=4 * world, seed=2)[:2]
    q = model(qx.chunk(world)[rank][:2])
    p = model(px.chunk(world)[rank])
    loss = info_nce(q, p, labels=torch.tensor([3, 1]), cross_device=True)
    loss.backward()
    out["loss_labels"] = loss.item()
    out["grads_labels"] = _mean_grads_over_ranks(model)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return run_distributed(_worker, tmp_path_factory.mktemp("dist_infonce"))


@pytest.fixture(scope="module")
def single() -> dict:
    model = TinyEncoder()
    loss = info_nce(*(model(x) for x in make_groups()))
    loss.backward()
    return {"loss": loss.item(), "grads": grads_of(model)}


def test_mean_of_rank_losses_equals_single_process_loss(ranks, single):
    mean_loss = sum(r["loss_with_grad"] for r in ranks) / len(ranks)
    assert mean_loss == pytest.approx(single["loss"], abs=ATOL)
    assert ranks[0]["loss_with_grad"] != pytest.approx(ranks[1]["loss_with_grad"], abs=1e-3)  # non-trivial split


def test_averaged_gradients_equal_single_process_gradients(ranks, single):
    for r in ranks:
        assert max_abs_diff(r["grads_with_grad"], single["grads"]) < ATOL


def test_global_candidate_count(ranks):
    # 8 positives + 8 hard negatives over both ranks; each query has 15 negatives
    assert [(r["num_candidates"], r["num_negatives"]) for r in ranks] == [(16, 15), (16, 15)]


def test_gather_without_grad_gives_the_same_loss_but_wrong_gradients(ranks, single):
    mean_loss = sum(r["loss_without_grad"] for r in ranks) / len(ranks)
    assert mean_loss == pytest.approx(single["loss"], abs=ATOL)  # forward is identical...
    assert max_abs_diff(ranks[0]["grads_without_grad"], single["grads"]) > 1e-3  # ...gradients are not


def test_labels_are_offset_by_rank(ranks):
    model = TinyEncoder()
    qx, px = make_groups(batch=8, seed=2)[:2]
    q = model(torch.cat([qx[:2], qx[4:6]]))
    p = model(px)
    loss = info_nce(q, p, labels=torch.tensor([3, 1, 7, 5]))  # rank 1's labels shifted by 4 positives
    loss.backward()
    assert sum(r["loss_labels"] for r in ranks) / 2 == pytest.approx(loss.item(), abs=ATOL)
    assert max_abs_diff(ranks[0]["grads_labels"], grads_of(model)) < ATOL
