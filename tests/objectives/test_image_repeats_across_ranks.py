"""Image-text InfoNCE keeps one caption of a repeated image over the GLOBAL batch: when the repeat sits on the
other rank, 2 gloo processes give the loss and gradients of one process on the concatenated batch (before, each
rank applied the rule to its own half and kept the repeat, which then was its own image's negative). Which
caption is kept is decided by content (the smallest caption id), not by position: a sampler that orders or splits
the same global batch differently keeps the same rows (mmgem_regions' 2-process step 2 differed before)."""

from __future__ import annotations

import pytest
import torch

from mmembed.objectives import ImageTextInfoNCE, StepContext
from mmembed.objectives.image_text import kept_in_global_batch
from tests.losses.helpers import GLOBAL_BATCH, TinyEncoder, grads_of, make_groups, max_abs_diff, run_distributed

ATOL = 1e-10
# global row 5 (rank 1) shows the same image as row 1 (rank 0); row 6 repeats row 4 on the same rank
IMAGE_IDS = torch.tensor([100, 101, 102, 103, 104, 101, 104, 107])
USABLE = torch.tensor([True, True, True, False, True, True, True, True])  # row 3's image did not open
TEXT_IDS = torch.arange(8) * 10  # caption ids rising with the position: the earliest caption of an image is kept


def _loss(model, groups, ids, usable, text_ids):
    texts, images = model(groups[0]), model(groups[1])
    features = {"valid": usable, "usable": usable, "image_ids": ids, "text_ids": text_ids}
    return ImageTextInfoNCE(0.05, symmetric=True).loss([texts, images], features, StepContext()).loss


def _rank(rank: int, world: int) -> dict:
    model = TinyEncoder()
    half = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    groups = [g[half] for g in make_groups()]
    loss = _loss(model, groups, IMAGE_IDS[half], USABLE[half], TEXT_IDS[half])
    loss.backward()
    return {"loss": loss.detach(), "grads": grads_of(model),
            "kept": kept_in_global_batch(IMAGE_IDS[half], TEXT_IDS[half], USABLE[half])}


def test_one_process_keeps_one_caption_of_each_image_and_never_an_unopened_one():
    assert kept_in_global_batch(IMAGE_IDS, TEXT_IDS, USABLE).tolist() == [True, True, True, False, True, False,
                                                                          False, True]


def test_the_kept_caption_does_not_depend_on_the_order_of_the_rows():
    order = torch.tensor([6, 5, 7, 0, 3, 1, 4, 2])  # the same rows, another sampler order
    kept = kept_in_global_batch(IMAGE_IDS[order], TEXT_IDS[order], USABLE[order])
    assert set(TEXT_IDS[order][kept].tolist()) == set(TEXT_IDS[kept_in_global_batch(IMAGE_IDS, TEXT_IDS, USABLE)].tolist())
    smaller_later = TEXT_IDS.flip(0)  # now row 5's caption id is below row 1's: row 5 is kept, row 1 not
    assert kept_in_global_batch(IMAGE_IDS, smaller_later, USABLE).tolist() == [True, False, True, False, False, True,
                                                                               True, True]


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_a_repeat_on_the_other_rank_is_dropped_as_on_one_process(tmp_path):
    ranks = run_distributed(_rank, tmp_path)
    assert torch.cat([r["kept"] for r in ranks]).tolist() == kept_in_global_batch(IMAGE_IDS, TEXT_IDS, USABLE).tolist()
    model = TinyEncoder()
    single = _loss(model, make_groups(), IMAGE_IDS, USABLE, TEXT_IDS)
    single.backward()
    assert sum(r["loss"].item() for r in ranks) / 2 == pytest.approx(single.item(), abs=ATOL)
    mean_grads = {k: (ranks[0]["grads"][k] + ranks[1]["grads"][k]) / 2 for k in ranks[0]["grads"]}
    assert max_abs_diff(mean_grads, grads_of(model)) < ATOL
    # the per-rank rule would have kept global row 5 on rank 1: a different loss, so the check can fail
    per_rank = TinyEncoder()
    t, i = per_rank(make_groups()[0]), per_rank(make_groups()[1])
    kept_locally = USABLE & torch.tensor([True, True, True, True, True, True, False, True])
    local_rule = ImageTextInfoNCE(0.05, symmetric=True).loss([t, i], {"valid": kept_locally}, StepContext()).loss
    assert abs(local_rule.item() - single.item()) > 1e-3
