"""TensorBoard pictures of validation (mmembed.lit.retrieval_pictures, mmembed.lit.tensorboard_views):

- the retrieval grid has the documented shape, frames the correct image green at its rank (the others grey), shows
  the thumbnails' pixels, and says in red when the correct image is not in the top k;
- the fixed queries, the custom-scalars layout and the ranking are exact;
- a tiny training run (validation before and after) writes the grid at step 0 and the last step, the projector's
  before/after folders (sprite, captions in metadata.tsv) and the custom-scalars layout into the event file;
  without a TensorBoard logger (CSV) it writes nothing and does not fail.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.lit import retrieval_pictures as pictures
from mmembed.lit.retrieval_pictures import RetrievalRow, grid_shape, render_retrieval_grid, top_k_rows
from mmembed.lit.tensorboard_views import custom_scalars_layout, query_captions

BORDER, GAP, LINE_H, PAD = pictures.BORDER, pictures.GAP, pictures.LINE_H, pictures.PAD
CORRECT, WRONG, MISSED, EMPTY_TILE = pictures.CORRECT, pictures.WRONG, pictures.MISSED, pictures.EMPTY_TILE
COLOURS = [(250, 0, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250), (120, 60, 0)]


def test_grid_has_its_shape_and_frames_the_correct_image_green_at_its_rank():
    images = [Image.new("RGB", (40, 30), c) for c in COLOURS]
    rows = [RetrievalRow("a red square", images[:5], [0.9, 0.8, 0.7, 0.6, 0.5], [False, True, False, False, False], 2),
            RetrievalRow("a brown square", images[:5], [0.9, 0.8, 0.7, 0.6, 0.5], [False] * 5, 6)]
    grid = render_retrieval_grid(rows, thumb=32)
    # by hand: row = 3 header lines (48) + tile (32 + 2*4) + score line (16) = 104; 8 + 2 * (104 + 8) = 232 high;
    # 8 + 5 tiles of 40 + 4 gaps of 8 + 8 = 248 wide
    assert grid.shape == (232, 248, 3) == grid_shape(2, 5, 32) and grid.dtype == np.uint8
    tile, header = 32 + 2 * BORDER, 3 * LINE_H
    for r in range(2):
        y = PAD + r * (104 + PAD) + header
        for j in range(5):
            x = PAD + j * (tile + GAP)
            frame = tuple(grid[y + 1, x + 1])
            assert frame == (CORRECT if (r, j) == (0, 1) else WRONG), (r, j)
            # the 40x30 image fills the 32-wide thumbnail, letterboxed: its centre is the image's colour
            assert tuple(grid[y + BORDER + 16, x + BORDER + 16]) == COLOURS[j]
    second_header = grid[PAD + 104 + PAD + 2 * LINE_H: PAD + 104 + PAD + header]
    assert (second_header.reshape(-1, 3) == MISSED).all(axis=1).any()  # "rank 6 (not in the top 5)" in red
    assert not (grid[:PAD + header].reshape(-1, 3) == MISSED).all(axis=1).any()  # the first row's note is green
    unreadable = render_retrieval_grid([RetrievalRow("q", ["/no/such/image.jpg"], [0.5], [True], 1)], thumb=32)
    assert tuple(unreadable[PAD + header + BORDER + 1, PAD + BORDER + 1]) == EMPTY_TILE  # a dark tile, no error


def test_top_k_rows_rank_by_cosine_and_find_the_correct_rank():
    image_emb = torch.eye(4)
    query_emb = torch.tensor([[0.1, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 2.0]])
    rows = top_k_rows(["q0", "q1"], query_emb, image_emb, ["a", "b", "c", "d"], [2, 1], k=3)
    assert [r.images for r in rows] == [["b", "c", "a"], ["d", "a", "b"]]
    assert [r.correct for r in rows] == [[False, True, False], [False, False, True]]
    assert [r.correct_rank for r in rows] == [2, 3]
    norm = float(torch.tensor([0.1, 1.0, 0.5]).norm())
    assert rows[0].scores == pytest.approx([1.0 / norm, 0.5 / norm, 0.1 / norm])


def test_queries_are_first_captions_of_images_spread_over_the_set():
    caption_image = [i for i in range(10) for _ in range(5)]  # 10 images, 5 captions each, in order
    assert query_captions(caption_image, 10, 4) == [0, 15, 30, 45]  # images 0, 3, 6, 9
    assert query_captions(caption_image[:10], 2, 4) == [0, 5]  # fewer images than queries
    assert query_captions([], 0, 4) == []


def test_custom_scalars_layout_groups_metrics_per_set_and_family():
    layout = custom_scalars_layout({"flickr8k_dev": ["t2i_R@1", "t2i_R@5", "i2t_R@1", "inputs"],
                                    "stsb_dev": ["spearman", "inputs"]})
    assert layout == {
        "val/flickr8k_dev": {"t2i_R": ["Multiline", [r"^val/flickr8k_dev/t2i_R@1$", r"^val/flickr8k_dev/t2i_R@5$"]],
                             "i2t_R": ["Multiline", [r"^val/flickr8k_dev/i2t_R@1$"]],
                             "inputs": ["Multiline", [r"^val/flickr8k_dev/inputs$"]]},
        "val/stsb_dev": {"spearman": ["Multiline", [r"^val/stsb_dev/spearman$"]],
                         "inputs": ["Multiline", [r"^val/stsb_dev/inputs$"]]}}
    assert re.match(layout["val/flickr8k_dev"]["t2i_R"][1][0], "val/flickr8k_dev/t2i_R@1")
    assert not re.match(layout["val/flickr8k_dev"]["t2i_R"][1][0], "val/flickr8k_dev/t2i_R@10")


def _projector_files(log_dir, step: int, tag: str):
    folder = log_dir / f"{step:05d}" / tag.replace("/", "%2f")
    return (folder / "metadata.tsv").read_text().splitlines(), Image.open(folder / "sprite.png"), \
        np.loadtxt(folder / "tensors.tsv", ndmin=2)


@pytest.mark.slow  # ~60 s: a 2-step run of the tiny SmolLlava validating 3 Flickr8k images before and after
def test_a_training_run_writes_the_pictures_projector_and_layout(tiny_smol_llava_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from mmembed.run.training import run_training
    from tests.pipeline.helpers import compose_train

    args = [f"model.name_or_path={tiny_smol_llava_dir}",  # the defaults: NLI text triplets, InfoNCE, LoRA
            "trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=4", "val=flickr8k_dev",
            "val.sets.flickr8k_dev.limit=3", "callbacks.tensorboard_views.n_queries=2",
            "callbacks.tensorboard_views.projector_limit=2", "callbacks.tensorboard_views.thumbnail_size=48",
            "callbacks.tensorboard_views.sprite_size=16", "callbacks.model_checkpoint.monitor=val/flickr8k_dev/t2i_R@1",
            "optimized_metric=val/flickr8k_dev/t2i_R@1"]
    cfg = compose_train(args, tmp_path / "run")
    run_training(cfg)
    log_dir = tmp_path / "run" / "tensorboard"
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0}).Reload()

    tag = "val/flickr8k_dev/top5_retrievals"
    pictures = events.Images(tag)
    assert [p.step for p in pictures] == [0, 2]  # the step-0 validation and the last step's
    for picture in pictures:
        png = np.asarray(Image.open(io.BytesIO(picture.encoded_image_string)).convert("RGB"))
        assert png.shape == grid_shape(2, 3, 48)  # 2 queries; 3 images, so the top 5 holds 3
        assert (png.reshape(-1, 3) == CORRECT).all(axis=1).any()  # some correct image framed (or its rank noted)

    # projector: before (step 0) and after (step 2), images and their captions in one space
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "flickr8k_dev/before:00000"' in config and 'tensor_name: "flickr8k_dev/after:00002"' in config
    plan = cfg_plan(cfg)
    captions = [item["text"] for item in plan.items[3:]]
    caption_image = plan.meta["caption_image"]
    expected_captions = [" ".join(captions[j].split()) for j in range(len(captions)) if caption_image[j] < 2]
    before, after = (_projector_files(log_dir, step, f"flickr8k_dev/{when}") for step, when in ((0, "before"), (2, "after")))
    for meta, sprite, tensors in (before, after):
        assert meta[0] == "kind\ttext\timage_id"
        rows = [line.split("\t") for line in meta[1:]]
        assert [r[0] for r in rows] == ["image"] * 2 + ["caption"] * 2  # flickr8k_dev validates 1 caption per image
        assert [r[1] for r in rows[2:]] == expected_captions
        image_ids = [r[2] for r in rows[:2]]
        assert [r[2] for r in rows[2:]] == [image_ids[caption_image[j]] for j in range(len(captions)) if caption_image[j] < 2]
        assert sprite.size == (2 * 16, 2 * 16)  # 4 sprites of 16 px: a 2 x 2 grid
        assert tensors.shape[0] == 4
    assert not np.allclose(before[2], after[2])  # two training steps moved the embeddings

    # custom scalars: one section per validated set, metric families grouped
    (config_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(config_event.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert category.title == "val/flickr8k_dev"
    assert charts["t2i_R"] == [rf"^val/flickr8k_dev/t2i_R@{k}$" for k in (1, 5, 10)]
    logged = set(events.Tags()["scalars"])
    assert all(any(re.match(t, s) for s in logged) for tags in charts.values() for t in tags)  # every chart has data


def cfg_plan(cfg):
    """The run's Flickr8k dev plan (its first 3 images and their captions), read again."""
    from hydra.utils import instantiate

    from mmembed.lit.validation import ValidationSets

    sets = ValidationSets({"flickr8k_dev": {"benchmark": instantiate(cfg.val.sets.flickr8k_dev.benchmark), "limit": 3}})
    return sets.setup()["flickr8k_dev"]


def test_no_tensorboard_logger_or_no_image_set_writes_nothing(tmp_path, caplog):
    """The callback's hooks on a CSV-logged trainer, and on a TensorBoard one whose validation lacks the set."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from mmembed.lit.tensorboard_views import TensorBoardViews
    from tests.lit.harness import validation_sets

    class Module(L.LightningModule):  # what the callback reads of EmbeddingLitModule
        validation = validation_sets()
        last_validation = (validation, {"sts": (torch.arange(14), torch.randn(14, 4))})

    callback, module = TensorBoardViews(), Module()
    csv = L.Trainer(logger=CSVLogger(tmp_path / "csv"), callbacks=[callback], enable_checkpointing=False)
    callback.on_fit_start(csv, module)
    callback.on_validation_end(csv, module)
    callback.on_train_end(csv, module)
    assert not list((tmp_path / "csv").rglob("*"))
    tb = L.Trainer(logger=TensorBoardLogger(tmp_path / "tb", name=None, version=""), callbacks=[callback],
                   enable_checkpointing=False)
    with caplog.at_level("INFO", logger="mmembed.lit.tensorboard_views"):
        for _ in range(2):
            callback.on_validation_end(tb, module)
    assert [r.getMessage() for r in caplog.records].count(
        "tensorboard_views: validation set 'flickr8k_dev' is not validated (val= picks ['sts']); "
        "no retrieval pictures or projector") == 1
    assert not list((tmp_path / "tb").rglob("projector_config.pbtxt")) and callback._last is None
