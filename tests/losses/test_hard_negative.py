"""UniME stage 2's hard-negative NCE: selection rules on a hand-built S, a brute-force reference,
GradCache, and 2 gloo processes = 1 process on the concatenated batch (loss and gradients).

Hand-built S: with the targets the identity basis (D = B), S = query @ I = query, so each query row IS
its similarity row and the expected selections can be read off the table below.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import mmembed.losses.hard_negative as hard_negative_module
from mmembed.errors import ConfigError
from mmembed.losses import grad_cache_step
from mmembed.losses.hard_negative import hard_negative_nce
from tests.losses.helpers import TinyEncoder, grads_of, make_groups, max_abs_diff, run_distributed

ATOL = 1e-10
# row i = S[i, :]; the positive is column i (bracketed in the comments)
S = torch.tensor(
    [
        [0.50, 0.70, 0.55, 0.30, 0.10],  # [.50]; .70 > .50 + .1: false negative; hardest left: 2, 3
        [0.20, 0.90, 0.95, 0.40, 0.30],  # [.90]; .95 is within beta: kept; hardest: 2, 3
        [0.85, 0.80, 0.60, 0.10, 0.20],  # [.60]; .85 and .80 filtered; left: 4, 3 only
        [0.10, 0.20, 0.30, 0.40, 0.35],  # [.40]; hardest: 4, 2
        [0.45, 0.05, 0.15, 0.25, 0.50],  # [.50]; hardest: 0, 3
    ],
    dtype=torch.float64,
)
TARGETS = torch.eye(5, dtype=torch.float64)


def test_false_negatives_are_filtered_and_the_k_hardest_kept():
    out = hard_negative_nce(S, TARGETS, beta=0.1, k=2, tau=0.1)
    assert out.hard_negatives.tolist() == [[2, 3], [2, 3], [4, 3], [4, 2], [0, 3]]
    assert out.false_negative_fraction.item() == pytest.approx(2 / 5)  # rows 0 and 2
    assert out.mean_false_negatives.item() == pytest.approx((1 + 0 + 2 + 0 + 0) / 5)
    assert out.padded_fraction.item() == 0 and out.num_candidates == 5


def test_loss_equals_hand_computation():
    tau = 0.1
    rows = [[0.50, 0.55, 0.30], [0.90, 0.95, 0.40], [0.60, 0.20, 0.10], [0.40, 0.35, 0.30], [0.50, 0.45, 0.25]]
    want = sum(-r[0] / tau + math.log(sum(math.exp(v / tau) for v in r)) for r in rows) / len(rows)
    assert hard_negative_nce(S, TARGETS, beta=0.1, k=2, tau=tau).loss.item() == pytest.approx(want, abs=1e-12)


def test_beta_moves_the_filter():
    no_filter = hard_negative_nce(S, TARGETS, beta=math.inf, k=2)
    assert no_filter.hard_negatives[0].tolist() == [1, 2]  # the planted false negative is back, hardest
    assert no_filter.hard_negatives[2].tolist() == [0, 1]
    assert no_filter.false_negative_fraction.item() == 0
    strict = hard_negative_nce(S, TARGETS, beta=0.0, k=2)
    assert strict.hard_negatives[1].tolist() == [3, 4]  # .95 > .90 + 0 is now filtered


def test_fewer_than_k_negatives_are_padded_with_minus_inf():
    tau = 0.1
    with pytest.warns(UserWarning, match="only 4 negatives"):
        out = hard_negative_nce(S, TARGETS, beta=0.1, k=6, tau=tau)
    assert out.hard_negatives[2].tolist() == [4, 3, -1, -1, -1, -1]
    assert out.hard_negatives[3].tolist() == [4, 2, 1, 0, -1, -1]
    assert out.padded_fraction.item() == 1.0
    k3 = hard_negative_nce(S, TARGETS, beta=0.1, k=3, tau=tau)
    assert k3.hard_negatives[2].tolist() == [4, 3, -1] and k3.padded_fraction.item() == pytest.approx(1 / 5)
    # the padded logit adds nothing: row 2's term is the cross-entropy over [.6, .2, .1] alone
    rows = [
        [0.5, 0.55, 0.3, 0.1],
        [0.9, 0.95, 0.4, 0.3],
        [0.6, 0.2, 0.1],
        [0.4, 0.35, 0.3, 0.2],
        [0.5, 0.45, 0.25, 0.15],
    ]
    want = sum(-r[0] / tau + math.log(sum(math.exp(v / tau) for v in r)) for r in rows) / len(rows)
    assert k3.loss.item() == pytest.approx(want, abs=1e-12)
    with pytest.warns(UserWarning, match="only 0 negatives"):
        alone = hard_negative_nce(S[2:3], TARGETS[2:3], k=1)  # one candidate, the positive: loss exactly 0
    assert alone.loss.item() == 0 and alone.hard_negatives.tolist() == [[-1]]


def reference_loss(query, target, beta, k, tau):
    """Brute force: python loops over queries and candidates, selection and loss written out."""
    terms = []
    for i in range(query.shape[0]):
        sims = [query[i] @ target[j] for j in range(target.shape[0])]
        positive = sims[i]
        kept = [j for j in range(len(sims)) if j != i and not sims[j].item() > positive.item() + beta]
        hardest = sorted(kept, key=lambda j: -sims[j].item())[:k]
        logits = torch.stack([positive] + [sims[j] for j in hardest]) / tau
        terms.append(-logits[0] + torch.logsumexp(logits, dim=0))
    return torch.stack(terms).mean()


def test_matches_brute_force_loss_and_gradients():
    g = torch.Generator().manual_seed(3)
    q0 = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    t0 = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    q1, t1 = q0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
    q2, t2 = q0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
    out = hard_negative_nce(q1, t1, beta=0.1, k=3, tau=0.05)
    out.loss.backward()
    reference_loss(q2, t2, 0.1, 3, 0.05).backward()
    assert out.false_negative_fraction.item() > 0  # the filter took part
    assert out.loss.item() == pytest.approx(reference_loss(q0, t0, 0.1, 3, 0.05).item(), abs=1e-12)
    torch.testing.assert_close(q1.grad, q2.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-12, rtol=0)


def test_masked_rows_and_mined_negatives_match_the_brute_force_on_what_is_left():
    """`valid` drops a query and its target column (as if the row were not there); `extra` adds candidates
    that are nobody's positive (a file's mined negatives), `extra_valid` drops placeholders among them."""
    g = torch.Generator().manual_seed(5)
    q, t, e = (F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=-1) for n in (6, 6, 4))
    valid = torch.tensor([True, True, False, True, True, True])
    masked = hard_negative_nce(q, t, beta=0.1, k=3, tau=0.05, valid=valid)
    keep = valid.nonzero().flatten()
    assert masked.loss.item() == pytest.approx(reference_loss(q[keep], t[keep], 0.1, 3, 0.05).item(), abs=1e-12)
    assert masked.hard_negatives.shape == (5, 3) and 2 not in masked.hard_negatives.tolist()

    extra_valid = torch.tensor([True, False, True, True])
    mined = hard_negative_nce(q, t, beta=0.1, k=3, tau=0.05, extra=e, extra_valid=extra_valid)
    want = reference_loss_with_extra(q, t, e[extra_valid], 0.1, 3, 0.05)
    assert mined.loss.item() == pytest.approx(want.item(), abs=1e-12)
    picked = {j for row in mined.hard_negatives.tolist() for j in row}
    assert picked & {6, 8, 9} and 7 not in picked  # mined columns follow the 6 targets; column 7 is masked


def reference_loss_with_extra(query, target, extra, beta, k, tau):
    """Brute force with extra candidates that are never a positive."""
    terms = []
    candidates = torch.cat([target, extra])
    for i in range(query.shape[0]):
        sims = [query[i] @ candidates[j] for j in range(candidates.shape[0])]
        kept = [j for j in range(len(sims)) if j != i and not sims[j].item() > sims[i].item() + beta]
        hardest = sorted(kept, key=lambda j: -sims[j].item())[:k]
        logits = torch.stack([sims[i]] + [sims[j] for j in hardest]) / tau
        terms.append(-logits[0] + torch.logsumexp(logits, dim=0))
    return torch.stack(terms).mean()


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match="tau"):
        hard_negative_nce(S, TARGETS, tau=0)
    with pytest.raises(ConfigError, match="k must be"):
        hard_negative_nce(S, TARGETS, k=0)
    with pytest.raises(ValueError, match="paired"):
        hard_negative_nce(S, TARGETS[:3])


def _loss(q, t):
    return hard_negative_nce(q, t, beta=0.1, k=3).loss


def test_grad_cache_matches_the_plain_loss():
    queries, targets = make_groups()[:2]
    plain = TinyEncoder()
    _loss(plain(queries), plain(targets)).backward()
    cached = TinyEncoder()
    grad_cache_step(cached, [queries, targets], _loss, chunk_size=3)
    assert max_abs_diff(grads_of(plain), grads_of(cached)) < ATOL


def _gather_detached(x, group=None):
    """UniME's released gather: plain all_gather, every shard (the local one too) cut from the graph."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    return torch.cat(parts)


def _worker(rank: int, world: int) -> dict:
    out = {}
    local_q, local_t = (g.chunk(world)[rank] for g in make_groups()[:2])
    for name, gather in (("with_grad", hard_negative_module.gather_with_grad), ("detached", _gather_detached)):
        hard_negative_module.gather_with_grad = gather
        model = TinyEncoder()
        res = hard_negative_nce(model(local_q), model(local_t), beta=0.1, k=3)
        res.loss.backward()
        for p in model.parameters():  # DDP: sum over ranks, divide by world size
            dist.all_reduce(p.grad)
            p.grad /= world
        out[name] = {"loss": res.loss.item(), "grads": grads_of(model), "fn": res.false_negative_fraction.item()}
        out[name]["hard_negatives"] = res.hard_negatives
    return out


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    ranks = run_distributed(_worker, tmp_path)
    model = TinyEncoder()
    queries, targets = make_groups()[:2]
    single = hard_negative_nce(model(queries), model(targets), beta=0.1, k=3)
    single.loss.backward()
    assert single.false_negative_fraction.item() > 0  # the filter acts on this batch
    assert sum(r["with_grad"]["loss"] for r in ranks) / 2 == pytest.approx(single.loss.item(), abs=ATOL)
    assert sum(r["with_grad"]["fn"] for r in ranks) / 2 == pytest.approx(single.false_negative_fraction.item())
    assert torch.equal(torch.cat([r["with_grad"]["hard_negatives"] for r in ranks]), single.hard_negatives)
    for r in ranks:
        assert max_abs_diff(r["with_grad"]["grads"], grads_of(model)) < ATOL
    # dropping the local shard's gradient (UniME's release) gives the same loss but wrong gradients
    assert sum(r["detached"]["loss"] for r in ranks) / 2 == pytest.approx(single.loss.item(), abs=ATOL)
    assert max_abs_diff(ranks[0]["detached"]["grads"], grads_of(model)) > 1e-3
