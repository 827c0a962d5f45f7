"""Masked rows keep every rank's collectives equal: 2 gloo processes finish and equal one process.

Rank 1's rows carry no hard negatives (text pairs), or one unreadable image (image-text). Each rank runs
the real objective's loss on its half of a global batch of 8, embedded by the seeded float64 TinyEncoder;
the parent averages losses and gradients over ranks (what DDP does) and compares with one process on the
concatenated batch with the same masks. A rank skipping a gather the other runs would hang: the test has
a timeout. Tolerance: 1e-10 in float64.
"""

from __future__ import annotations

import pytest
import torch

from mmembed.objectives import ImageTextInfoNCE, StepContext, TextPairInfoNCE
from tests.losses.helpers import GLOBAL_BATCH, TinyEncoder, grads_of, make_groups, max_abs_diff, run_distributed

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]
ATOL = 1e-10
HALF = GLOBAL_BATCH // 2


def _text_pair_loss(model, groups, hard_negative_valid):
    q, p, n = (model(g) for g in groups)
    features = {"sizes": [len(q), len(p), len(n)]}
    if hard_negative_valid is not None:
        features["hard_negative_valid"] = hard_negative_valid
    return TextPairInfoNCE(0.05).loss([torch.cat([q, p, n])], features, StepContext()).loss


def _image_text_loss(model, groups, valid):
    texts, images = model(groups[0]), model(groups[1])
    return ImageTextInfoNCE(0.05).loss([texts, images], {"valid": valid}, StepContext()).loss


# rank 0: all hard negatives present; rank 1: none (placeholders, masked)
HARD_NEGATIVE_VALID = torch.tensor([True] * HALF + [False] * HALF)
# one unreadable image on rank 1
IMAGE_VALID = torch.tensor([True] * HALF + [True, False, True, True])


def _rank(rank: int, world: int, kind: str) -> dict:
    model = TinyEncoder()
    groups = [g.chunk(world)[rank] for g in make_groups()]
    if kind == "text":
        mask = HARD_NEGATIVE_VALID.chunk(world)[rank]
        loss = _text_pair_loss(model, groups, None if bool(mask.all()) else mask)
    else:
        loss = _image_text_loss(model, groups, IMAGE_VALID.chunk(world)[rank])
    loss.backward()
    return {"loss": loss.detach(), "grads": grads_of(model)}


def _text_rank(rank, world):
    return _rank(rank, world, "text")


def _image_rank(rank, world):
    return _rank(rank, world, "image")


@pytest.mark.parametrize("kind", ["text", "image"])
def test_two_ranks_with_masked_rows_equal_one_process(kind, tmp_path):
    ranks = run_distributed(_text_rank if kind == "text" else _image_rank, tmp_path)
    model = TinyEncoder()
    if kind == "text":
        single = _text_pair_loss(model, make_groups(), HARD_NEGATIVE_VALID)
    else:
        single = _image_text_loss(model, make_groups(), IMAGE_VALID)
    single.backward()
    mean_loss = sum(r["loss"] for r in ranks) / len(ranks)
    mean_grads = {k: sum(r["grads"][k] for r in ranks) / len(ranks) for k in ranks[0]["grads"]}
    assert abs(mean_loss.item() - single.item()) < ATOL
    assert max_abs_diff(mean_grads, grads_of(model)) < ATOL


def test_masks_change_the_loss_so_the_check_can_fail():
    model = TinyEncoder()
    masked = _text_pair_loss(model, make_groups(), HARD_NEGATIVE_VALID)
    unmasked = _text_pair_loss(model, make_groups(), None)
    assert abs(masked.item() - unmasked.item()) > 1e-3
    some_invalid = _image_text_loss(model, make_groups(), IMAGE_VALID)
    all_valid = _image_text_loss(model, make_groups(), torch.ones(GLOBAL_BATCH, dtype=torch.bool))
    assert abs(some_invalid.item() - all_valid.item()) > 1e-3
