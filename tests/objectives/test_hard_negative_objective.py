"""UniME stage 2 on MMEB-format rows: the training-file reader, mixed-modality batches embedded per
modality and put back in row order, masked unreadable images, and `experiment=unime_stage2` training
(plain and under GradCache) on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.data.collate import MMEBRows
from mmembed.data.mmeb_train import read_mmeb_train
from mmembed.errors import DataConfigError, SkipCounter
from mmembed.losses.hard_negative import hard_negative_nce
from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.objectives import HardNegativeNCE, StepContext
from mmembed.run.training import run_training
from tests.pipeline.helpers import compose_train

CLS = "<|image_1|> Represent the given image for classification"


def _image(path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path.name


def _train_folder(tmp_path, n: int = 8):
    """MMEB-train rows of every kind: image -> label, text -> image, image+question -> answer, with negatives."""
    images = tmp_path / "images"
    rows = []
    for i in range(n):
        name = f"img/{_image(images / 'img' / f'{i}.png', i)}"
        kind = i % 3
        if kind == 0:
            rows.append({"qry": CLS, "qry_image_path": name, "pos_text": f"label {i}", "pos_image_path": "",
                         "neg_text": f"label {i + 1}", "neg_image_path": ""})
        elif kind == 1:
            rows.append({"qry": f"Find me an everyday image that matches the given caption: scene {i}",
                         "qry_image_path": "", "pos_text": "<|image_1|> Represent the given image.",
                         "pos_image_path": name, "neg_text": "", "neg_image_path": ""})
        else:
            rows.append({"qry": f"<|image_1|> Represent the given image with the following question: what is {i}?",
                         "qry_image_path": name, "pos_text": f"answer {i}", "pos_image_path": "",
                         "neg_text": "", "neg_image_path": ""})
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder, images


def test_reader_resolves_images_placeholders_and_negatives(tmp_path):
    folder, images = _train_folder(tmp_path, n=3)
    rows = read_mmeb_train([str(folder)], images)
    assert [r["qry"] for r in rows][0] == "<image> Represent the given image for classification"
    assert rows[0]["qry_image"] == str(images / "img/0.png") and rows[0]["pos_image"] is None
    assert rows[0]["neg"] == "label 1" and rows[1]["neg"] is None
    assert rows[1]["pos"] == "<image> Represent the given image." and rows[1]["pos_image"] == str(images / "img/1.png")

    (images / "img/2.png").unlink()
    skips = SkipCounter()
    assert len(read_mmeb_train([str(folder)], images, skips=skips)) == 2 and skips.count == 1
    with pytest.raises(DataConfigError, match="row 2: qry image .* missing"):
        read_mmeb_train([str(folder)], images, on_error="raise")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "x", "pos_text": "y"}) + "\n")
    with pytest.raises(DataConfigError, match=r"missing MMEB training column\(s\) \['qry', 'qry_image_path'"):
        read_mmeb_train([str(bad)], images)


@pytest.fixture(scope="module")
def tiny_embedder(tiny_smol_llava_dir):
    return MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir))).eval()


def _one_by_one(embedder, texts, images):
    """Each input embedded alone, with the prompt kind the MMEB evaluation gives its modality."""
    out = []
    with torch.no_grad():
        for text, image in zip(texts, images):
            if image is None:
                out.append(embedder(**embedder.featurizer.featurize_text([text])))
            elif not text.replace("<image>", "").strip():
                out.append(embedder(**embedder.featurizer.featurize_images([image], kind="image")))
            else:
                out.append(embedder(**embedder.featurizer.featurize_images([image], [text], kind="text")))
    return torch.cat(out)


def test_mixed_modalities_are_embedded_per_modality_and_put_back_in_row_order(tiny_embedder, tmp_path):
    folder, images = _train_folder(tmp_path, n=7)
    prepared = MMEBRows(tiny_embedder.featurizer)(read_mmeb_train([str(folder)], images)).rows
    objective = HardNegativeNCE(k=3, tau=0.05, file_negatives=True)
    features = objective.features(tiny_embedder.featurizer, prepared)
    assert len(objective.groups(features)) == 2 + 2 + 1  # queries: image, image+text; targets: text, image; negs: text
    with torch.no_grad():
        out = objective(tiny_embedder, features, StepContext(training=False))
    q = _one_by_one(tiny_embedder, [r["qry"] for r in prepared], [r["qry_image"] for r in prepared])
    p = _one_by_one(tiny_embedder, [r["pos"] for r in prepared], [r["pos_image"] for r in prepared])
    negs = [r["neg"] or " " for r in prepared]
    n = _one_by_one(tiny_embedder, negs, [None] * len(prepared))
    neg_valid = torch.tensor([r["neg"] is not None for r in prepared])
    want = hard_negative_nce(q, p, k=3, tau=0.05, extra=n, extra_valid=neg_valid)
    assert out.loss.item() == pytest.approx(want.loss.item(), abs=2e-4)  # batching pads differently
    assert out.metrics["num_candidates"] == 14.0


def test_an_unreadable_image_masks_its_row(tiny_embedder, tmp_path):
    folder, images = _train_folder(tmp_path, n=6)
    rows = read_mmeb_train([str(folder)], images)
    (images / "img/4.png").write_bytes(b"not a png")  # row 4's positive image
    prepared = MMEBRows(tiny_embedder.featurizer)(rows)
    assert [r["ok"] for r in prepared.rows] == [True, True, True, True, False, True] and prepared.skipped == 1
    objective = HardNegativeNCE(k=2, tau=0.05)
    with torch.no_grad():
        masked = objective(tiny_embedder, objective.features(tiny_embedder.featurizer, prepared.rows), StepContext())
        kept = [r for r in prepared.rows if r["ok"]]
        alone = objective(tiny_embedder, objective.features(tiny_embedder.featurizer, kept), StepContext())
    assert masked.loss.item() == pytest.approx(alone.loss.item(), abs=2e-4)


def _stage2_args(model_dir, folder, images, tmp_path, *extra):
    return ["experiment=unime_stage2", f"model.name_or_path={model_dir}", f"data.train_files=[{folder}]",
            f"data.image_root={images}", "data.batch_size=4", "trainer.max_steps=2", "val=none",
            "validate_before_training=false", "~logger", "objective.k=3", f"paths.cache_dir={tmp_path / 'cache'}",
            *extra]


@pytest.mark.slow  # two training runs
def test_unime_stage2_trains_and_gradcache_gives_the_same_steps(tiny_smol_llava_dir, tmp_path):
    folder, images = _train_folder(tmp_path, n=8)
    plain = run_training(compose_train(_stage2_args(tiny_smol_llava_dir, folder, images, tmp_path), tmp_path / "a"))
    cached = run_training(compose_train(_stage2_args(tiny_smol_llava_dir, folder, images, tmp_path,
                                                     "grad_cache.chunk_size=2"), tmp_path / "b"))
    assert plain["global_step"] == cached["global_step"] == 2 and plain["objective"] == "HardNegativeNCE"
    assert np.isfinite(plain["metrics"]["train/loss"])
    assert cached["metrics"]["train/loss"] == pytest.approx(plain["metrics"]["train/loss"], abs=1e-4)
    assert plain["metrics"]["train/num_candidates"] == 4.0
