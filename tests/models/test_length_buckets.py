"""Length buckets (mmembed/models/length_buckets.py): the cuts are the optimum, and an embedder that runs a
batch in length-sorted runs gives the one-forward embeddings and gradients, on fewer positions."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.length_buckets import MIN_SAVING, best_cuts, padded_positions, plan_buckets
from mmembed.models.lora import apply_lora
from tests.tiny_models import build_tiny


def brute_force(lengths: list[int], k: int) -> int:
    """The least padded positions over every way of cutting sorted `lengths` into at most k runs."""
    n = len(lengths)
    best = n * lengths[-1]
    for runs in range(2, min(k, n) + 1):
        for inner in itertools.combinations(range(1, n), runs - 1):
            best = min(best, padded_positions(lengths, [*inner, n]))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_cuts_are_the_least_padding_of_every_possible_cut(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(3, 60) for _ in range(rng.randint(2, 11)))
    for k in (1, 2, 3, 4):
        cuts = best_cuts(lengths, k)
        assert len(cuts) <= k and cuts[-1] == len(lengths) and cuts == sorted(set(cuts))
        assert padded_positions(lengths, cuts) == brute_force(lengths, k)


def test_hand_worked_cuts():
    # rows of 5, 6, 30, 31 tokens: one run pads all to 31 (124 positions); two runs 2*6 + 2*31 = 74
    assert padded_positions([5, 6, 30, 31], [4]) == 124
    assert best_cuts([5, 6, 30, 31], 2) == [2, 4]
    assert padded_positions([5, 6, 30, 31], best_cuts([5, 6, 30, 31], 3)) == 73  # 5 + 6 + 2 * 31, or 12 + 30 + 31
    assert best_cuts([7, 7, 7], 3) == [3]  # equal lengths: one run is already the least (fewest runs kept)


def test_a_run_cost_keeps_fewer_runs_unless_they_save_more_than_it():
    assert best_cuts([5, 6, 30, 31], 3, run_cost=0.0) in ([1, 2, 4], [2, 3, 4])
    assert best_cuts([5, 6, 30, 31], 3, run_cost=2.0) == [2, 4]  # the third run saves 1 < 2
    assert best_cuts([5, 6, 30, 31], 3, run_cost=60.0) == [4]  # the second saves 50 < 60


def test_plan_partitions_the_rows_shortest_first_and_declines_small_savings():
    mask = torch.zeros(4, 31, dtype=torch.long)
    for row, n in enumerate([30, 5, 31, 6]):
        mask[row, -n:] = 1  # left padding
    # [5], [6], [30, 31] is 73 positions against [5, 6], [30, 31]'s 74: one position does not pay for a forward
    assert [b.tolist() for b in plan_buckets(mask, 3)] == [[1, 3], [0, 2]]
    assert [b.tolist() for b in plan_buckets(mask, 3, min_saving=0.0)] == [[1], [3], [0, 2]]
    assert plan_buckets(mask, 1) is None
    even = torch.ones(4, 10, dtype=torch.long)
    even[0, 0] = 0  # one padded position of 40: below the 3% of positions an extra forward must save
    assert plan_buckets(even, 3) is None
    assert plan_buckets(mask[:1], 3) is None


@pytest.fixture(scope="module")
def tiny_dir(smol_tokenizer_dir, tmp_path_factory) -> Path:
    return build_tiny("llava_next", smol_tokenizer_dir, tmp_path_factory.mktemp("tiny_buckets"))


TEXTS = ["A cat.", "A man riding a red bicycle down a steep hill while his dog runs behind him in the rain.",
         "Two birds.", "Children play football on a wide green field near the old stone church at noon.",
         "A dog.", "Snow.", "A woman reads a long book about the history of ships and the sea on a quiet bench."]


@pytest.mark.parametrize("side", ["left", "right"])
def test_bucketed_forward_gives_the_one_forward_vectors_and_gradients_on_fewer_positions(tiny_dir, side):
    torch.manual_seed(0)
    backbone = load_backbone(str(tiny_dir), padding_side=side)
    backbone.model = apply_lora(backbone.model, 4, 8, 0.0, None)
    for p in backbone.model.parameters():  # LoRA B starts at zero: give it values so its gradient is informative
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    embedder = MLLMEmbedder(backbone)
    inputs = embedder.featurize_text(TEXTS)
    seen = []
    hook = embedder.backbone.body.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    target = torch.randn(len(TEXTS), embedder(**inputs).shape[1])
    results = {}
    try:
        for k in (1, 3):
            embedder.length_buckets = k
            embedder.zero_grad(set_to_none=True)
            seen.clear()
            vectors = embedder(**inputs)
            (vectors * target).sum().backward()
            grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
            results[k] = (vectors.detach(), grads, list(seen))
    finally:
        hook.remove()
    one, three = results[1], results[3]
    torch.testing.assert_close(three[0], one[0], atol=2e-6, rtol=0)  # same rows, same order
    assert one[1].keys() == three[1].keys() and len(one[1]) > 0
    for name in one[1]:
        torch.testing.assert_close(three[1][name], one[1][name], atol=1e-5, rtol=1e-4)
    positions = {k: sum(b * n for b, n in shapes) for k, (_, _, shapes) in results.items()}
    lengths = sorted(int(n) for n in inputs["attention_mask"].sum(1))
    cuts = best_cuts(lengths, 3, run_cost=MIN_SAVING * len(lengths) * lengths[-1])
    assert len(results[3][2]) == len(cuts) > 1 and len(results[1][2]) == 1
    assert positions[1] == len(TEXTS) * lengths[-1]
    assert positions[3] == padded_positions(lengths, cuts) < 0.85 * positions[1]


def test_image_inputs_run_as_one_forward(tiny_dir):
    from PIL import Image

    embedder = MLLMEmbedder(load_backbone(str(tiny_dir)), length_buckets=3)
    images = [Image.new("RGB", (40, 40), (i * 40, 90, 200 - i * 30)) for i in range(3)]
    inputs = embedder.featurize_images(images, ["A cat.", "A long caption of a busy street market at dusk.", "Sky."],
                                       kind="cir_query")
    calls = []
    hook = embedder.backbone.body.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    try:
        with torch.no_grad():
            embedder(**inputs)
    finally:
        hook.remove()
    assert calls == [1]
