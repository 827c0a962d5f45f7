"""Image-caption training data: the four layouts, the fixed Flickr8k split, and the two collators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmembed.data.image_text import (
    CaptionCollator,
    ImageTextCollator,
    read_image_text_source,
    read_image_text_sources,
)
from mmembed.errors import BadImageError, DataConfigError


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(folder / name)
    return folder


def test_caption_csv_image_range_slices_the_name_sorted_images(tmp_path):
    _images(tmp_path / "img", ["c.jpg", "a.jpg", "b.jpg"])
    (tmp_path / "caps.txt").write_text("image,caption\nc.jpg,C one\na.jpg,A one\nb.jpg,\"B, with comma\"\na.jpg,A two\n")
    src = {"format": "caption_csv", "captions": str(tmp_path / "caps.txt"), "images": str(tmp_path / "img")}
    first_two = read_image_text_source({**src, "image_range": [0, 2]})
    assert [(Path(p.image).name, p.text) for p in first_two] == [("a.jpg", "A one"), ("b.jpg", "B, with comma"), ("a.jpg", "A two")]
    last = read_image_text_source({**src, "image_range": [2, 3]})
    assert [(Path(p.image).name, p.text) for p in last] == [("c.jpg", "C one")]
    with pytest.raises(ValueError, match="selects no image"):
        read_image_text_source({**src, "image_range": [5, 9]})


def test_coco_json_pairs_file_and_imagefolder_layouts(tmp_path):
    _images(tmp_path / "coco", ["1.jpg", "2.jpg"])
    (tmp_path / "caps.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [{"image_id": 2, "caption": " Two "}, {"image_id": 1, "caption": "One"}],
    }))
    coco = read_image_text_source({"format": "coco_json", "captions": str(tmp_path / "caps.json"), "images": str(tmp_path / "coco")})
    assert [(Path(p.image).name, p.text) for p in coco] == [("2.jpg", "Two"), ("1.jpg", "One")]

    (tmp_path / "pairs.jsonl").write_text('{"image": "coco/1.jpg", "text": "first"}\n{"image": "coco/2.jpg", "text": "second"}\n')
    jsonl = read_image_text_source({"format": "pairs", "file": str(tmp_path / "pairs.jsonl")})
    assert [(p.image, p.text) for p in jsonl] == [(str(tmp_path / "coco/1.jpg"), "first"), (str(tmp_path / "coco/2.jpg"), "second")]
    (tmp_path / "pairs.csv").write_text("img,caption\n1.jpg,uno\n")
    csv_pairs = read_image_text_source({"format": "pairs", "file": str(tmp_path / "pairs.csv"), "images": str(tmp_path / "coco"),
                                        "image_column": "img", "text_column": "caption"})
    assert [(p.image, p.text) for p in csv_pairs] == [(str(tmp_path / "coco/1.jpg"), "uno")]

    folder = _images(tmp_path / "imagefolder", ["x.png", "y.png"])
    (folder / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "an x"}\n{"file_name": "y.png", "text": "a y"}\n')
    pairs = read_image_text_source({"format": "imagefolder", "root": str(folder)})
    assert [(Path(p.image).name, p.text) for p in pairs] == [("x.png", "an x"), ("y.png", "a y")]
    # The same folder is a valid `datasets` ImageFolder with the same captions.
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    assert sorted(ds["text"]) == sorted(p.text for p in pairs)


def test_bad_source_settings_name_the_problem(tmp_path):
    (tmp_path / "p.csv").write_text("picture,words\na.jpg,x\n")
    with pytest.raises(DataConfigError, match=r"needs columns 'image' and 'text'"):
        read_image_text_source({"format": "pairs", "file": str(tmp_path / "p.csv")})
    with pytest.raises(DataConfigError, match="format='parquet'"):
        read_image_text_source({"format": "parquet", "file": "x"})
    with pytest.raises(DataConfigError, match="metadata.jsonl or metadata.csv"):
        read_image_text_source({"format": "imagefolder", "root": str(tmp_path)})
    with pytest.raises(DataConfigError, match="data.sources is empty"):
        read_image_text_sources([])


def test_flickr8k_split_is_800_train_200_test_and_disjoint(data_root):
    src = {"format": "caption_csv", "captions": str(data_root / "flickr8k/captions_1000imgs.txt"),
           "images": str(data_root / "flickr8k/images")}
    train = {p.image for p in read_image_text_source({**src, "image_range": [0, 800]})}
    test = {p.image for p in read_image_text_source({**src, "image_range": [800, 1000]})}
    assert len(train) == 800 and len(test) == 200 and not train & test
    assert max(Path(p).name for p in train) < min(Path(p).name for p in test)  # split by sorted file name


def test_no_training_config_sees_a_test_image(data_root, tmp_path):
    """Every image-text training source (align and image_text arms) is disjoint from the held-out
    evaluation images (Flickr8k test retrieval and the modality-gap pairs)."""
    from mmembed.data.benchmarks.captions import read_caption_config
    from mmembed.pipeline import benchmark_list
    from tests.pipeline.helpers import compose_train

    held_out = set()
    cfg = compose_train(["hparams_search=modality_ablation", "experiment=image_text"], tmp_path)
    for bench in benchmark_list(cfg.evaluation):
        if bench["task"] == "retrieval":
            held_out |= {str(p) for p in read_caption_config(bench).images}
    held_out |= {str(p) for p in read_caption_config(dict(cfg.evaluation.modality_gap)).images}
    assert len(held_out) == 200
    for experiment in ("align", "image_text"):
        cfg = compose_train([f"experiment={experiment}"], tmp_path)
        from omegaconf import OmegaConf

        sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
        train = {p.image for p in read_image_text_sources(sources)}
        assert len(train) == 880, experiment  # 800 Flickr8k train + 80 COCO
        assert not train & held_out, experiment


class _FakeFeaturizer:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return {"n": len(args[0])}


def test_image_text_collator_drops_repeated_images_and_skips_unreadable(tmp_path):
    _images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows = [{"image": str(tmp_path / "a.jpg"), "text": "a one"}, {"image": str(tmp_path / "broken.jpg"), "text": "x"},
            {"image": str(tmp_path / "a.jpg"), "text": "a two"}, {"image": str(tmp_path / "b.jpg"), "text": "b one"}]
    text_f, image_f = _FakeFeaturizer(), _FakeFeaturizer()
    batch = ImageTextCollator(text_f, image_f, truncate=lambda t: [s.upper() for s in t])(rows)
    assert batch["batch_size"] == 2 and batch["skipped"] == 1 and batch["truncated"] == 2
    assert text_f.calls == [(["A ONE", "B ONE"],)]
    assert [img.size for img in image_f.calls[0][0]] == [(8, 8), (8, 8)]
    with pytest.raises(BadImageError, match="broken.jpg"):
        ImageTextCollator(text_f, image_f, truncate=list, on_error="raise")(rows)
    with pytest.raises(DataConfigError, match="no image of this batch"):
        ImageTextCollator(text_f, image_f, truncate=list)(rows[1:2])


def test_caption_collator_labels_only_the_caption(default_model_dir):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.captioning import CaptionFeaturizer
    from mmembed.models.prompts import PromptConfig, PromptRenderer

    bb = load_backbone(str(default_model_dir))
    featurize = CaptionFeaturizer(bb, PromptRenderer(PromptConfig(system=""), bb.tokenizer, bb.image_token))
    assert featurize.prompt() == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<image>\nDescribe the image in one sentence.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")]
    batch = CaptionCollator(featurize, truncate=list)(
        [{"image": images[0], "text": "A red square on a table ."}, {"image": images[1], "text": "Two dogs"}]
    )
    inputs = batch["inputs"]
    assert inputs["pixel_values"].shape == (2, 3, 224, 224)
    for row, caption in enumerate(["A red square on a table .", "Two dogs"]):
        labels, mask = inputs["labels"][row], inputs["attention_mask"][row]
        assert bb.tokenizer.decode(labels[labels != -100]) == caption + "<|im_end|>"
        assert mask[: int(mask.sum())].all()  # right padding: the caption ends the real tokens
        assert (labels[mask == 0] == -100).all()
    # The whole sequence is the prompt (with 49 image tokens) followed by the caption.
    n = int(inputs["attention_mask"][1].sum())
    assert bb.tokenizer.decode(inputs["input_ids"][1][:n]).endswith("<|im_start|>assistant\nTwo dogs<|im_end|>")
    assert int((inputs["input_ids"][1] == bb.model.config.image_token_id).sum()) == 49
    assert torch.equal(inputs["labels"][1][:n][-3:], inputs["input_ids"][1][:n][-3:])
