"""UniME stage 2 with repeated targets: the row's target identity, one forward per distinct target, and the
same loss and gradients as embedding every row (the de-duplication changes cost, not the result)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmembed.data.collate import MMEBRows
from mmembed.data.mmeb_train import read_mmeb_train
from mmembed.losses.hard_negative import hard_negative_nce
from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.objectives import HardNegativeNCE, StepContext
from mmembed.objectives.target_identity import distinct, expand, target_identity
from tests.objectives.test_hard_negative_objective import _image, _one_by_one

VQA = "<|image_1|> Represent the given image with the following question: {}"


def _vqa_folder(tmp_path):
    """Six easy-VQA-like rows whose answers repeat ("yes" x3, "no" x2, "red"), plus two text->image rows that
    share their target image."""
    images = tmp_path / "images"
    rows = [{"qry": VQA.format(f"q{i}?"), "qry_image_path": f"img/{_image(images / 'img' / f'{i}.png', i)}",
             "pos_text": answer, "pos_image_path": "", "neg_text": "", "neg_image_path": ""}
            for i, answer in enumerate(["yes", "no", "yes", "red", "no", "yes"])]
    shared = f"img/{_image(images / 'img' / 'shared.png', 99)}"
    rows += [{"qry": f"Find me an everyday image that matches the given caption: a dog {i}", "qry_image_path": "",
              "pos_text": "<|image_1|> Represent the given image.", "pos_image_path": shared,
              "neg_text": "", "neg_image_path": ""} for i in range(2)]
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder, images


def test_identity_depends_on_content_only():
    a, b = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "red")
    assert target_identity("yes", None) == target_identity("yes", None) != target_identity("no", None)
    assert target_identity("<image>", a) == target_identity("<image>", b) != target_identity("<image>", None)
    assert target_identity("x", Image.new("RGB", (8, 8), "blue")) != target_identity("x", a)
    rows, index = distinct([7, 3, 7, 5, 3])
    assert rows == [0, 1, 3] and index.tolist() == [0, 1, 0, 2, 1]
    table = torch.arange(6.0).reshape(3, 2)
    assert expand(table, index).tolist() == [[0, 1], [2, 3], [0, 1], [4, 5], [2, 3]]


@pytest.fixture(scope="module")
def embedder(tiny_smol_llava_dir):
    return MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir))).eval()


def _rows(embedder, tmp_path):
    folder, images = _vqa_folder(tmp_path)
    return MMEBRows(embedder.featurizer)(read_mmeb_train([str(folder)], images)).rows


def test_each_distinct_target_is_embedded_once_and_the_loss_is_the_brute_force(embedder, tmp_path):
    rows = _rows(embedder, tmp_path)
    objective = HardNegativeNCE(k=3, tau=0.05)
    features = objective.features(embedder.featurizer, rows)
    target_groups = features["sides"]["pos"]
    assert sum(len(r) for r, _ in target_groups) == 4  # yes, no, red, the shared image: 4 forwards for 8 rows
    with torch.no_grad():
        out = objective(embedder, features, StepContext(training=False))
        q = _one_by_one(embedder, [r["qry"] for r in rows], [r["qry_image"] for r in rows])
        p = _one_by_one(embedder, [r["pos"] for r in rows], [r["pos_image"] for r in rows])
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3])  # the same partition as the content hashes
    want = hard_negative_nce(q, p, k=3, tau=0.05, target_ids=ids)
    assert out.loss.item() == pytest.approx(want.loss.item(), abs=2e-4)  # batching pads differently
    # every query but "red"'s has copies of its positive in the batch: 2 + 1 + 2 + 0 + 1 + 2 + 1 + 1 = 10 / 8
    assert out.metrics["mean_duplicate_targets"] == pytest.approx(10 / 8)
    assert out.metrics["distinct_targets"] == 4.0
    unmasked = hard_negative_nce(q, p, k=3, tau=0.05)
    assert abs(unmasked.loss.item() - want.loss.item()) > 1e-2  # the copies did change the loss before


def test_dedup_gives_the_loss_and_gradients_of_one_forward_per_row(embedder, tmp_path):
    rows = _rows(embedder, tmp_path)
    results = {}
    for dedup in (True, False):
        objective = HardNegativeNCE(k=3, tau=0.05, dedup_targets=dedup)
        features = objective.features(embedder.featurizer, rows)
        embedder.zero_grad()
        loss = objective(embedder, features, StepContext()).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}
        results[dedup] = (loss.item(), grads, sum(len(r) for r, _ in features["sides"]["pos"]))
    assert results[True][2] == 4 and results[False][2] == 8
    assert results[True][0] == pytest.approx(results[False][0], abs=2e-4)
    worst = max((results[True][1][n] - g).abs().max().item() / (g.abs().max().item() + 1e-12)
                for n, g in results[False][1].items())
    assert worst < 1e-2  # fp32 batching of different sizes pads differently; no gradient goes missing
    embedder.zero_grad()
