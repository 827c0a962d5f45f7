"""GradCache in EmbeddingLitModule (`grad_cache.chunk_size`) gives the plain path's training step.

One process, tiny SmolLlava + LoRA (r=4, random B so both A and B get gradients), batch 4 triplets
= 12 sequences. Tolerances (float32): adapter gradients agree to max|diff| / max|grad| <= 1e-5
(observed ~1e-7), losses to 1e-5, weights after one AdamW step to 2e-5 absolute (0.2% of the
first step's lr of 1e-2: Adam divides each element by its own magnitude, so elements with
near-zero gradient turn float32 noise into visible update differences; observed 1e-8 to 1.6e-5).

With LoRA dropout active the plain reference embeds chunk by chunk with grad (one graph, one
backward), so its dropout masks are the ones GradCache draws and replays; the ordinary single-pass
forward draws other masks, and the test checks that this *does* change the gradients (so the
comparison could fail).
"""

from __future__ import annotations

import pytest

from mmembed.errors import ConfigError
from mmembed.lit.module import EmbeddingLitModule
from mmembed.lit.strategies import manual_optimization_split
from mmembed.objectives import Captioning, TextPairInfoNCE
from tests.lit.harness import run
from tests.lit.helpers import max_abs_diff, rel_diff, total_norm

GRAD_RTOL = 1e-5
WEIGHT_ATOL = 2e-5  # 0.2% of the first step's lr (1e-2)
LOSS_ATOL = 1e-5


@pytest.fixture(scope="module")
def dropout_runs(tiny_smol_llava_dir):
    kw = dict(dropout=0.1, batch_size=4)
    return {
        "gradcache": run(tiny_smol_llava_dir, chunk_size=2, **kw),
        "plain_same_masks": run(tiny_smol_llava_dir, chunked_forward=2, **kw),
        "plain_single_pass": run(tiny_smol_llava_dir, **kw),
    }


def test_gradcache_step_equals_plain_step_with_lora_dropout(dropout_runs):
    gc, plain = dropout_runs["gradcache"], dropout_runs["plain_same_masks"]
    assert any("lora_A" in k for k in gc["grads"]) and any("lora_B" in k for k in gc["grads"])
    assert all(g.abs().max() > 0 for g in gc["grads"].values()), "some adapter got no gradient"
    assert rel_diff(gc["grads"], plain["grads"]) <= GRAD_RTOL
    assert max_abs_diff(gc["weights"], plain["weights"]) <= WEIGHT_ATOL
    # logging is identical: the same loss and the same negatives count (4 positives + 4 hard negatives - 1)
    assert abs(gc["metrics"]["train/loss"] - plain["metrics"]["train/loss"]) <= LOSS_ATOL
    assert gc["metrics"]["train/num_negatives"] == plain["metrics"]["train/num_negatives"] == 7
    # one optimizer step and one scheduler step (linear decay over 1 step: lr 1e-2 -> 0) in both
    assert gc["global_step"] == plain["global_step"] == 1
    assert gc["lr"] == plain["lr"] == 0.0


def test_dropout_is_active_so_the_comparison_can_fail(dropout_runs):
    gc, single_pass = dropout_runs["gradcache"], dropout_runs["plain_single_pass"]
    assert rel_diff(gc["grads"], single_pass["grads"]) > 1e-2
    assert abs(gc["metrics"]["train/loss"] - single_pass["metrics"]["train/loss"]) > 1e-3


def test_gradcache_applies_clipping_and_accumulation_like_the_trainer(tiny_smol_llava_dir):
    # 2 micro-batches of 4 accumulated into one step, gradient norm clipped to 1e-3; uneven chunks (5, 5, 2).
    kw = dict(dropout=0.0, batch_size=4, rows=8, accumulate=2, clip=1e-3, max_steps=1)
    gc = run(tiny_smol_llava_dir, chunk_size=5, **kw)
    plain = run(tiny_smol_llava_dir, **kw)  # Lightning's automatic clipping and accumulation
    assert total_norm(plain["grads"]) == pytest.approx(1e-3, rel=1e-4)  # clipping was active
    assert total_norm(gc["grads"]) == pytest.approx(1e-3, rel=1e-4)
    assert rel_diff(gc["grads"], plain["grads"]) <= GRAD_RTOL
    assert max_abs_diff(gc["weights"], plain["weights"]) <= WEIGHT_ATOL
    assert gc["global_step"] == plain["global_step"] == 1  # two batches, one optimizer step
    assert gc["lr"] == plain["lr"] == 0.0  # one scheduler step of the 1-step linear decay
    assert abs(gc["metrics"]["train/loss"] - plain["metrics"]["train/loss"]) <= LOSS_ATOL


def test_manual_optimization_split_moves_clipping_and_accumulation_to_the_module():
    trainer = {"gradient_clip_val": 1.0, "accumulate_grad_batches": 4}
    assert manual_optimization_split(trainer, None) == ({}, {})
    overrides, module_kwargs = manual_optimization_split(trainer, 16)
    assert overrides == {"gradient_clip_val": None, "accumulate_grad_batches": 1}
    assert module_kwargs == {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "norm", "accumulate_grad_batches": 4}


def test_invalid_chunk_size_is_refused():
    with pytest.raises(ConfigError, match="chunk_size"):
        EmbeddingLitModule(None, TextPairInfoNCE(), optim={}, chunk_size=-1)


def test_an_objective_that_cannot_run_under_gradcache_is_refused():
    with pytest.raises(ConfigError, match="cannot run under GradCache"):
        EmbeddingLitModule(None, Captioning(), optim={}, chunk_size=8)
