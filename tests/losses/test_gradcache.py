"""GradCache gives exactly the plain full-batch loss's gradients (DESIGN rule 4), dropout included.

The model has Dropout(p=0.1) in training mode. The reference is the plain loss on the full batch,
embedded with grad; it is embedded chunk by chunk from the same RNG stream only so that its dropout
masks are the ones GradCache draws (bernoulli over 8 rows is not the same draw as over 3 + 3 + 2
rows). With chunk_size = batch size the reference is one ordinary forward per group. Tolerance:
atol 1e-10 in float64 (observed ~1e-16), 1e-5 in float32. Replaying chunks without restoring the
RNG state must give different gradients (the test can fail).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist

from mmembed.losses import grad_cache_step, info_nce, split_batch
from mmembed.losses.gradcache import RngState
from tests.losses.helpers import (
    GLOBAL_BATCH,
    TinyEncoder,
    encode_as_ranks,
    grads_of,
    make_groups,
    max_abs_diff,
    run_distributed,
)

SEED = 123


def _reference(dtype, chunk_size, seeds=(SEED,)):
    model = TinyEncoder(dropout=0.1, dtype=dtype).train()
    loss = info_nce(*encode_as_ranks(model, make_groups(dtype=dtype), chunk_size, list(seeds)))
    loss.backward()
    return loss.item(), grads_of(model)


def _grad_cache(dtype, chunk_size):
    model = TinyEncoder(dropout=0.1, dtype=dtype).train()
    torch.manual_seed(SEED)
    loss = grad_cache_step(model, make_groups(dtype=dtype), info_nce, chunk_size)
    return loss, grads_of(model)


@pytest.mark.parametrize("chunk_size", [1, 3, GLOBAL_BATCH])
def test_grad_cache_matches_full_batch_gradients_with_dropout(chunk_size):
    ref_loss, ref_grads = _reference(torch.float64, chunk_size)
    ref_rng = torch.get_rng_state()
    loss, grads = _grad_cache(torch.float64, chunk_size)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(ref_loss, abs=1e-10)
    assert max_abs_diff(grads, ref_grads) < 1e-10
    # the replays leave the global RNG where a single forward would have left it
    assert torch.equal(torch.get_rng_state(), ref_rng)


@pytest.mark.parametrize(("chunk_size", "chunks"), [(3, 9), (GLOBAL_BATCH, 3)])
def test_grad_cache_re_runs_every_chunk_but_the_last(chunk_size, chunks):
    """n chunks cost 2n - 1 encoder calls: the last chunk keeps its graph from the first pass."""
    model = TinyEncoder(dropout=0.1, dtype=torch.float64).train()
    calls = []

    def encode(x):
        calls.append((x.shape[0], torch.is_grad_enabled()))
        return model(x)

    torch.manual_seed(SEED)
    grad_cache_step(encode, make_groups(dtype=torch.float64), info_nce, chunk_size)
    assert len(calls) == 2 * chunks - 1
    first_pass = calls[:chunks]
    assert [grad for _, grad in first_pass] == [False] * (chunks - 1) + [True]
    assert all(grad for _, grad in calls[chunks:])
    assert sum(n for n, _ in calls[chunks:]) == 3 * GLOBAL_BATCH - first_pass[-1][0]


def test_grad_cache_float32():
    ref_loss, ref_grads = _reference(torch.float32, 3)
    loss, grads = _grad_cache(torch.float32, 3)
    assert loss.item() == pytest.approx(ref_loss, abs=1e-5)
    assert max_abs_diff(grads, ref_grads) < 1e-5


def test_dropout_is_active_and_replay_without_rng_restore_fails(monkeypatch):
    _, ref_grads = _reference(torch.float64, 3)
    _, no_dropout_grads = _reference_eval()
    assert max_abs_diff(ref_grads, no_dropout_grads) > 1e-3  # dropout really changes the gradients
    monkeypatch.setattr(RngState, "replay", lambda self: contextlib.nullcontext())
    _, grads = _grad_cache(torch.float64, 3)
    assert max_abs_diff(grads, ref_grads) > 1e-3


def _reference_eval():
    model = TinyEncoder(dropout=0.1).eval()
    loss = info_nce(*(model(x) for x in make_groups()))
    loss.backward()
    return loss.item(), grads_of(model)


def test_grad_cache_accepts_mappings_and_one_encoder_per_group():
    model = TinyEncoder()
    q, p, n = make_groups()
    mask = torch.ones(GLOBAL_BATCH, 1, dtype=q.dtype)

    def enc_dict(batch):
        return model(batch["x"] * batch["mask"])

    loss = grad_cache_step([enc_dict, model, model], [{"x": q, "mask": mask, "flag": True}, p, n], info_nce, 3)
    grads = grads_of(model)
    model.zero_grad()
    ref = info_nce(model(q), model(p), model(n))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-10)
    assert max_abs_diff(grads, grads_of(model)) < 1e-10
    with pytest.raises(ValueError):
        grad_cache_step([model, model], [q, p, n], info_nce, 3)


def test_split_batch():
    x = torch.arange(7)
    assert [c.tolist() for c in split_batch(x, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    chunks = split_batch({"ids": torch.zeros(5, 2), "names": list("abcde"), "flag": 1}, 2)
    assert [len(c["names"]) for c in chunks] == [2, 2, 1]
    assert [c["ids"].shape[0] for c in chunks] == [2, 2, 1]
    assert all(c["flag"] == 1 for c in chunks)
    assert split_batch(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    with pytest.raises(ValueError):
        split_batch(x, 0)


# ---- 2 gloo processes, DistributedDataParallel -------------------------------------------------

RANK_SEEDS = [SEED, SEED + 1]
DIST_CHUNK = 3  # local batch 4 -> chunks of 3 + 1 per group, 6 chunk re-runs per step


def _ddp_worker(rank: int, world: int) -> dict:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = TinyEncoder(dropout=0.1).train()
    ddp = DDP(model)
    allreduces = []
    ddp.register_comm_hook(None, lambda state, bucket: (allreduces.append(1), allreduce_hook(state, bucket))[1])
    local = [g.chunk(world)[rank] for g in make_groups()]
    torch.manual_seed(RANK_SEEDS[rank])

    def loss_fn(q, p, n):
        return info_nce(q, p, n, cross_device=True)

    loss = grad_cache_step(ddp, local, loss_fn, DIST_CHUNK, no_sync=ddp.no_sync)
    return {"loss": loss.item(), "grads": grads_of(model), "allreduces": len(allreduces)}


@pytest.mark.distributed
def test_grad_cache_under_ddp_equals_single_process_on_concatenated_batch(tmp_path):
    ranks = run_distributed(_ddp_worker, tmp_path)
    ref_loss, ref_grads = _reference(torch.float64, DIST_CHUNK, seeds=RANK_SEEDS)
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(ref_loss, abs=1e-10)
    for r in ranks:  # DDP already averaged the gradients
        assert max_abs_diff(r["grads"], ref_grads) < 1e-10
        assert r["allreduces"] == 1  # one gradient all-reduce per step, not one per chunk
    assert not dist.is_initialized()
