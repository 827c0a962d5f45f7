"""Image-caption training data: the layouts, `image_range` for a user's own data, and the two collators.

The official Flickr8k split (split files, several image folders, the token file): test_official_split.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmembed.data.image_text import (
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
    """`image_range` stays for a user's own caption file with no official split (no config of ours uses it)."""
    _images(tmp_path / "img", ["c.jpg", "a.jpg", "b.jpg"])
    (tmp_path / "caps.txt").write_text("image,caption\nc.jpg,C one\na.jpg,A one\nb.jpg,\"B, with comma\"\na.jpg,A two\n")
    src = {"format": "caption_csv", "captions": str(tmp_path / "caps.txt"), "images": str(tmp_path / "img")}
    first_two = read_image_text_source({**src, "image_range": [0, 2]})
    assert [(Path(p.image).name, p.text) for p in first_two] == [("a.jpg", "A one"), ("b.jpg", "B, with comma"), ("a.jpg", "A two")]
    last = read_image_text_source({**src, "image_range": [2, 3]})
    assert [(Path(p.image).name, p.text) for p in last] == [("c.jpg", "C one")]
    with pytest.raises(DataConfigError, match="selects no image"):
        read_image_text_source({**src, "image_range": [5, 9]})


def test_pairs_file_takes_the_split_by_file_name(tmp_path):
    (tmp_path / "train.txt").write_text("a.jpg\nc.jpg\n")
    (tmp_path / "test.txt").write_text("b.jpg\n")
    (tmp_path / "pairs.csv").write_text("image,text\nx/a.jpg,an a\nx/b.jpg,a b\ny/c.jpg,a c\nx/d.jpg,a d\n")
    src = {"format": "pairs", "file": str(tmp_path / "pairs.csv"), "split": "train",
           "split_files": {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")}}
    assert [(p.image, p.text) for p in read_image_text_source(src)] == [
        (str(tmp_path / "x/a.jpg"), "an a"), (str(tmp_path / "y/c.jpg"), "a c")]
    assert [p.text for p in read_image_text_source({**src, "split": "test"})] == ["a b"]


def test_source_paths_lists_every_folder_and_split_file():
    from omegaconf import OmegaConf

    from mmembed.data.image_text import source_paths

    source = OmegaConf.create({"format": "flickr8k_token", "captions": "/d/tok.txt", "images": ["/d/a", "~/b"],
                               "split": "train", "split_files": {"train": "/d/tr.txt", "test": "/d/te.txt"}})
    assert source_paths(source) == [("captions", Path("/d/tok.txt")), ("images", Path("/d/a")),
                                    ("images", Path("~/b").expanduser()), ("split_files.train", Path("/d/tr.txt")),
                                    ("split_files.test", Path("/d/te.txt"))]


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


class _FakeFeaturizer:
    """Records what each objective featurises; 'tokens' are characters."""

    def __init__(self):
        self.texts, self.images = [], []

    def truncate(self, texts, max_tokens):
        return [t.upper() for t in texts]

    def featurize_text(self, texts):
        self.texts.append(list(texts))
        return {"n": len(texts)}

    def featurize_images(self, images, texts=None, kind="image", category=None):
        self.images.append(list(images))
        return {"n": len(images)}


def test_image_text_rows_mask_repeated_and_unreadable_images(tmp_path):
    from mmembed.data.collate import ObjectiveCollator
    from mmembed.data.sources.image_text import ImageTextRows
    from mmembed.objectives import ImageTextInfoNCE

    _images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows = [{"image": str(tmp_path / "a.jpg"), "text": "a one"}, {"image": str(tmp_path / "broken.jpg"), "text": "x"},
            {"image": str(tmp_path / "a.jpg"), "text": "a two"}, {"image": str(tmp_path / "b.jpg"), "text": "b one"}]
    featurizer = _FakeFeaturizer()
    collate = ObjectiveCollator(ImageTextRows(featurizer, 32), ImageTextInfoNCE(), featurizer)
    batch = collate(rows)
    # every row stays (equal shapes on every rank); the unreadable and the repeated image are masked out
    assert batch["batch_size"] == 4 and batch["skipped"] == 1 and batch["truncated"] == 4
    assert batch["features"]["valid"].tolist() == [True, False, False, True]
    assert featurizer.texts == [["A ONE", "X", "A TWO", "B ONE"]]
    assert [img.size for img in featurizer.images[0]] == [(8, 8), (32, 32), (8, 8), (8, 8)]  # a placeholder
    with pytest.raises(BadImageError, match="broken.jpg"):
        ObjectiveCollator(ImageTextRows(featurizer, 32, on_error="raise"), ImageTextInfoNCE(), featurizer)(rows)
    with pytest.raises(DataConfigError, match="no image of this batch"):
        collate(rows[1:2])


def test_caption_inputs_label_only_the_caption(default_model_dir):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.prompts import PromptConfig
    from mmembed.objectives import Captioning

    bb = load_backbone(str(default_model_dir))
    featurizer = MLLMEmbedder(bb, PromptConfig(system="")).featurizer
    assert featurizer.renderer.user_turn("<image>\nDescribe the image in one sentence.") == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<image>\nDescribe the image in one sentence.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")]
    inputs = Captioning().features(featurizer, [{"image": images[0], "image_key": "r", "text": "A red square on a table ."},
                                                {"image": images[1], "image_key": "b", "text": "Two dogs"}])
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
