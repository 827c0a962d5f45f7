"""MM-GEM's region-level objectives on the tiny SmolLlava: a row with a box is its RoI-pooled region (h1 for
the contrastive vector, h2 of the RoI tokens as the caption prefix), a row without one its whole image,
both checked against hand computations; the region data source and experiment=mmgem_regions end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.featurizer import IGNORE_INDEX
from mmembed.models.mmgem.extension import MMGEMExtension, normalised_boxes
from mmembed.models.mmgem.pool_aggregator import roi_align
from mmembed.models.prompts import PromptConfig
from mmembed.objectives import Captioning, ImageTextInfoNCE, StepContext
from mmembed.objectives.regions import RegionCaptioning, RegionTextInfoNCE

PROMPTS = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")
IMAGE_ID = 49152


@pytest.fixture(scope="module")
def mmgem(tiny_smol_llava_dir):
    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=PROMPTS,
                                        extension=MMGEMExtension()))
    torch.manual_seed(1)
    with torch.no_grad():  # move h1 / h2 off their init
        for p in embedder.model.model.multi_modal_projector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return embedder.eval()


def _rows():
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    return [{"image": images[0], "image_key": "a#box", "text": "a red ball", "box": (4.0, 2.0, 30.0, 38.0)},
            {"image": images[1], "image_key": "b", "text": "two dogs play in the snow", "box": None},
            {"image": images[2], "image_key": "c#box", "text": "a man", "box": (20.0, 0.0, 48.0, 40.0)}]


def _visual_tokens(mmgem, rows):
    """By hand: [B, C, 3, 3] tokens per row, the box's RoI tokens or the whole map's 3x3 average pool."""
    featurizer = mmgem.featurizer
    pixels = featurizer.featurize_images([r["image"] for r in rows])["pixel_values"]
    with torch.no_grad():
        fmap = mmgem.model.model.vision_tower.forward_features(pixels)
    out = []
    for i, row in enumerate(rows):
        if row["box"] is None:
            out.append(F.adaptive_avg_pool2d(fmap[i : i + 1], 3))
        else:
            box = normalised_boxes([row["image"]], [row["box"]], featurizer) * 7
            out.append(roi_align(fmap[i : i + 1], torch.cat([torch.zeros(1, 1), box], dim=1), 3, aligned=True))
    return torch.cat(out), fmap


def test_region_infonce_uses_region_vectors_for_boxed_rows_and_h1_for_whole_images(mmgem):
    rows = _rows()
    objective = RegionTextInfoNCE(symmetric=True)
    features = objective.features(mmgem.featurizer, rows)
    assert torch.isnan(features["images"]["region_boxes"][1]).all()  # the whole-image row
    with torch.no_grad():
        got = objective(mmgem, features, StepContext()).loss
        tokens, fmap = _visual_tokens(mmgem, rows)
        heads = mmgem.model.model.multi_modal_projector
        vectors = torch.stack([tokens[0].mean(dim=(1, 2)), fmap[1].mean(dim=(1, 2)), tokens[2].mean(dim=(1, 2))])
        images = F.normalize(heads.h1(vectors), dim=-1)
        texts = mmgem(**features["texts"])
        logits = texts @ images.T / 0.05
        expected = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
        plain = ImageTextInfoNCE(symmetric=True)
        whole = plain(mmgem, plain.features(mmgem.featurizer, rows), StepContext()).loss
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert abs(whole.item() - got.item()) > 1e-3  # the boxes changed the candidates


def test_region_captioning_loss_equals_a_forward_with_the_roi_prefix_written_in_by_hand(mmgem):
    rows = _rows()
    objective = RegionCaptioning(instruction="<image>")
    features = objective.features(mmgem.featurizer, rows)
    with torch.no_grad():
        got = objective(mmgem, features, StepContext()).loss
        tokens, _ = _visual_tokens(mmgem, rows)
        prefix = mmgem.model.model.multi_modal_projector.h2(tokens.flatten(2).transpose(1, 2))  # [3, 9, D]
        ids, labels = features["input_ids"], features["labels"]
        embeds = mmgem.model.get_input_embeddings()(ids)
        mask = ids == IMAGE_ID
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), prefix.reshape(-1, prefix.shape[-1]))
        hidden = mmgem.model.model.language_model(inputs_embeds=embeds,
                                                  attention_mask=features["attention_mask"]).last_hidden_state
        logits = mmgem.model.lm_head(hidden[:, :-1])
        expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        plain = Captioning(instruction="<image>")
        whole = plain(mmgem, plain.features(mmgem.featurizer, rows), StepContext()).loss
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)
    assert abs(whole.item() - got.item()) > 1e-3
    # without boxes the region objective is the plain one
    no_boxes = [dict(r, box=None) for r in rows]
    with torch.no_grad():
        same = objective(mmgem, objective.features(mmgem.featurizer, no_boxes), StepContext()).loss
    assert same.item() == pytest.approx(whole.item(), abs=1e-6)


def test_a_box_in_the_cropped_off_strip_leaves_its_row_out(mmgem):
    tall = Image.fromarray(np.zeros((80, 40, 3), dtype=np.uint8))  # 40 x 80: the crop keeps rows 20..60
    rows = _rows() + [{"image": tall, "image_key": "t#box", "text": "a hat", "box": (0.0, 0.0, 40.0, 10.0)}]
    contrastive = RegionTextInfoNCE().features(mmgem.featurizer, rows)
    assert contrastive["valid"].tolist() == [True, True, True, False]
    captioning = RegionCaptioning(instruction="<image>").features(mmgem.featurizer, rows)
    assert captioning["input_ids"].shape[0] == 3 and captioning["region_boxes"].shape == (3, 4)
    # the rejected box is counted (logged as train/boxes_rejected), not silently masked
    assert contrastive["boxes_rejected"] == captioning["boxes_rejected"] == 1
    with torch.no_grad():
        out = RegionCaptioning(instruction="<image>")(mmgem, captioning, StepContext())
    assert out.metrics["boxes_rejected"] == 1.0


@pytest.mark.slow  # reads the region boxes of all 3,513 train images (~10 s) and trains 2 steps
def test_experiment_mmgem_regions_trains_on_region_rows_and_its_arms_drop_a_part(tiny_smol_llava_dir, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from mmembed.run.training import run_training
    from tests.pipeline.helpers import compose_train

    cfg = compose_train(["experiment=mmgem_regions", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
                         "data.batch_size=4", "val=none", "validate_before_training=false", "~logger",
                         "lora.r=4", "data.train_limit=8"], tmp_path / "run")
    assert [s.name for s in cfg.data.sources] == ["flickr8k_train", "coco80_train", "flickr8k_train_regions"]
    datamodule = instantiate(cfg.data)
    rows = datamodule.read_train_set()
    regions = [r for r in rows if r["box"] is not None]
    assert len(regions) > 10_000 and len(rows) - len(regions) > 17_000  # phrases and whole-image captions
    with open_dict(cfg):
        cfg.data.sources = [cfg.data.sources[2]]  # only region rows: every step goes through region_route
    summary = run_training(cfg)
    assert summary["global_step"] == 2
    assert {"train/image_text/loss", "train/captioning/loss"} <= set(summary["metrics"])
    for arm, parts in (("embedding_only", ["image_text"]), ("captioning_only", ["captioning"])):
        objective = instantiate(compose_train(["experiment=mmgem_regions", f"arm={arm}"], tmp_path / arm).objective,
                                _convert_="all")
        assert sorted(objective.parts) == parts
        assert type(objective.parts[parts[0]]).__name__ in ("RegionTextInfoNCE", "RegionCaptioning")
