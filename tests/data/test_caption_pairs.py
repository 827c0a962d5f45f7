"""Caption pairs (two captions of one image) as text-only training rows: which captions pair up, the image- and
caption-level filters, the counts on the shared Flickr30K captions, and a short training run on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mmembed.data.collate import ObjectiveCollator
from mmembed.data.evalsets.caption_splits import normalise_caption, read_token_file
from mmembed.data.heldout import image_identity
from mmembed.data.sources.caption_pairs import CaptionPairSource
from mmembed.errors import DataConfigError, SkipCounter
from mmembed.objectives import TextPairInfoNCE
from tests.conftest import REPO
from tests.data.fake_featurizer import CharFeaturizer

# A Flickr30K-like caption file: `<photo id>.jpg`, captions per image.
CAPTIONS = {
    "1.jpg": ["A dog runs .", "A brown dog running", "A dog on grass", "A dog outside"],
    "2.jpg": ["Two kids play .", "Kids playing"],
    "3.jpg": ["A man surfs .", "A surfer on a wave", "A man in the sea"],
    "4.jpg": ["A cat sleeps .", "A sleeping cat", "A cat on a bed"],  # a Flickr8k TEST photo (4_...)
    "5.jpg": ["A bird flies .", "A bird in the sky"],  # Karpathy test
    "6.jpg": ["A red car", "a  BIRD flies .", "A car on a road"],  # a test image's caption, spacing/case changed
    "7.jpg": ["A boat", "A boat on a lake", "A woman rows a boat"],  # holds an evaluation sentence
    "8.jpg": ["A train", "A sleeping cat"],  # its second caption is the held-out Flickr8k image's
    "9.jpg": ["A horse", "A horse runs"],  # Karpathy val: not the train split
}
SPLITS = {"train": ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "6.jpg", "7.jpg", "8.jpg"], "val": ["9.jpg"], "test": ["5.jpg"]}
EVALUATION = frozenset({normalise_caption("A woman rows a boat")})


def _fake(tmp_path: Path, captions: dict | None = None, **settings) -> CaptionPairSource:
    lines = [json.dumps({"image": image, "split": "x", "caption": caps}) for image, caps in (captions or CAPTIONS).items()]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    files = {}
    for split, names in SPLITS.items():
        files[split] = str(tmp_path / f"{split}.txt")
        Path(files[split]).write_text("\n".join(names) + "\n")
    (tmp_path / "f8k_test.txt").write_text("4_0123456789.jpg\n")  # the Flickr8k name of photo 4
    return CaptionPairSource(captions=str(tmp_path / "captions.jsonl"), split="train", split_files=files,
                             heldout_images={"flickr8k_test": str(tmp_path / "f8k_test.txt"),
                                             "flickr30k_test": files["test"]}, **settings)


def _pairs(source: CaptionPairSource, heldout=EVALUATION):
    rows, dropped = source.read_rows("skip", SkipCounter(), heldout)
    return {r["image"]: (r["sent0"], r["sent1"]) for r in rows}, dropped


def test_one_pair_per_train_image_picked_by_seed(tmp_path):
    pairs, dropped = _pairs(_fake(tmp_path, pair_seed=0))
    # pinned: the pair of an image depends on (pair_seed, image name) only
    assert pairs == {
        "1.jpg": ("A dog outside", "A dog on grass"),
        "2.jpg": ("Two kids play .", "Kids playing"),
        "3.jpg": ("A man surfs .", "A surfer on a wave"),
        "6.jpg": ("A car on a road", "A red car"),
        "7.jpg": ("A boat on a lake", "A boat"),
    }
    assert dropped == 1
    assert _pairs(_fake(tmp_path, pair_seed=0))[0] == pairs  # deterministic
    other = _pairs(_fake(tmp_path, pair_seed=1))[0]
    assert other != pairs and other.keys() == pairs.keys()
    for image, (anchor, positive) in other.items():
        assert anchor != positive and {anchor, positive} <= set(CAPTIONS[image])


def test_held_out_images_and_their_captions_and_evaluation_sentences_never_train(tmp_path):
    source = _fake(tmp_path, pair_seed=0)
    pairs, dropped = _pairs(source)
    texts = {normalise_caption(t) for pair in pairs.values() for t in pair}
    # the Flickr8k test photo (under its Flickr30K name), the Karpathy test and val images: no row, no caption
    assert not {"4.jpg", "5.jpg", "9.jpg"} & pairs.keys()
    for image in ("4.jpg", "5.jpg", "9.jpg"):
        assert not texts & {normalise_caption(c) for c in CAPTIONS[image]}
    assert normalise_caption("A woman rows a boat") not in texts and dropped == 1
    assert source.counts == {
        "images": 9, "images_not_in_split": 2, "images_dropped_flickr8k_test": 1, "images_dropped_flickr30k_test": 0,
        "captions_repeated_for_an_image": 0,
        "captions_of_heldout_images": 2,  # 6.jpg's copy of 5.jpg's caption, 8.jpg's copy of 4.jpg's
        "captions_heldout_sentences": 1, "captions_of_several_images": 0,
        "images_with_under_two_captions": 1,  # 8.jpg, left with one caption
        "pairs": 5,
    }
    # without the evaluation filter that sentence may train; the image rules stay
    unfiltered = _fake(tmp_path, pair_seed=0)
    rows, none = unfiltered.read_rows("skip", SkipCounter(), frozenset())
    assert none == 0 and unfiltered.counts["captions_heldout_sentences"] == 0
    assert set(rows["image"]) == set(pairs)


def test_a_caption_of_several_images_or_twice_for_one_is_dropped(tmp_path):
    captions = {**CAPTIONS, "2.jpg": ["Two kids play .", "Kids playing", "kids  playing"],
                "3.jpg": ["A man surfs .", "A surfer on a wave", "A dog on grass"]}  # also 1.jpg's
    source = _fake(tmp_path, captions, pair_seed=0)
    pairs, _ = _pairs(source)
    texts = [normalise_caption(t) for pair in pairs.values() for t in pair]
    assert normalise_caption("A dog on grass") not in texts and len(texts) == len(set(texts))
    assert pairs["2.jpg"] in {("Two kids play .", "Kids playing"), ("Kids playing", "Two kids play .")}
    assert source.counts["captions_of_several_images"] == 2 and source.counts["captions_repeated_for_an_image"] == 1


def test_rows_featurise_like_nli_rows_without_hard_negatives(tmp_path):
    rows, _ = _fake(tmp_path, pair_seed=0).read_rows("skip", SkipCounter(), EVALUATION)
    featurizer = CharFeaturizer()
    collate = ObjectiveCollator(_fake(tmp_path).row_preparer(featurizer, 6, "skip"), TextPairInfoNCE(), featurizer)
    batch = collate([rows[0], rows[1]])
    assert batch["features"]["sizes"] == [2, 2]  # anchors, positives: no hard-negative group
    assert featurizer.calls == [["A dog ", "Two ki", "A dog ", "Kids p"]] and batch["truncated"] == 4


def test_setting_mistakes_are_refused_by_name(tmp_path):
    with pytest.raises(DataConfigError, match="data.split='train' needs its image list"):
        CaptionPairSource(captions="x.jsonl", split="train", split_files={})
    with pytest.raises(DataConfigError, match="data.format='karpathy'"):
        CaptionPairSource(captions="x.jsonl", format="karpathy", split=None)
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(DataConfigError, match=r"data.heldout_images.f8k=.*nope.txt does not exist"):
        CaptionPairSource(captions=str(tmp_path / "c.jsonl"), split=None, heldout_images={"f8k": str(tmp_path / "nope.txt")}).check_paths()


# ---- the shared Flickr30K captions, as conf/data/flickr30k_caption_pairs.yaml reads them ----

def _datamodule(data_root: Path, *overrides: str):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", ["experiment=text_only", "data=flickr30k_caption_pairs", f"paths.data_root={data_root}",
                                *overrides])
    datamodule = instantiate(cfg.data)
    return datamodule, datamodule.read_train_set()


# Read from the shared data, then pinned: 29,000 Karpathy train images, 867 + 871 of them Flickr8k dev/test photos.
SHARED_COUNTS = {
    "images": 31014, "images_not_in_split": 2014, "images_dropped_flickr8k_dev": 867,
    "images_dropped_flickr8k_test": 871, "images_dropped_flickr30k_test": 0, "captions_repeated_for_an_image": 43,
    "captions_of_heldout_images": 145, "captions_heldout_sentences": 561, "captions_of_several_images": 550,
    "images_with_under_two_captions": 2, "pairs": 27260,
}


@pytest.mark.slow  # reads 155,070 captions and the evaluation sets (about 30 s)
def test_shared_flickr30k_pairs_hold_no_held_out_image_or_caption(data_root):
    datamodule, rows = _datamodule(data_root)
    assert datamodule.source.counts == SHARED_COUNTS and len(rows) == 27260
    assert datamodule.heldout_dropped == 561  # the evaluation sentences; no row had a validation image left
    split = {s: {image_identity(n) for n in (data_root / f"flickr8k_224/text/Flickr_8k.{s}Images.txt").read_text().split()}
             for s in ("dev", "test")}
    f30k = {s: {image_identity(n) for n in (data_root / f"flickr30k/splits/{s}.txt").read_text().split()}
            for s in ("train", "test")}
    images = {image_identity(i) for i in rows["image"]}
    assert len(images) == len(rows) and images <= f30k["train"]  # one pair per image, train images only
    assert not images & (split["dev"] | split["test"] | f30k["test"])
    texts = {normalise_caption(t) for c in ("sent0", "sent1") for t in rows[c]}
    assert not texts & _flickr8k_dev_test_captions(data_root, split["dev"] | split["test"])
    assert len(texts) == 2 * len(rows)  # no sentence in two rows: no in-batch false negative of equal text


def _flickr8k_dev_test_captions(data_root: Path, photos: set[str]) -> set[str]:
    """Flickr8k's own captions (Flickr8k.token.txt) of those photos, case and spacing folded."""
    _, captions, _ = read_token_file(data_root / "flickr8k_224/text/Flickr8k.token.txt")
    held = {normalise_caption(c) for name, c in captions if image_identity(name) in photos}
    assert len(held) > 9000
    return held


@pytest.mark.slow
def test_shared_pairs_without_the_evaluation_filter_keep_the_image_and_caption_rules(data_root):
    datamodule, rows = _datamodule(data_root, "heldout=none", "val=none")
    # the 561 evaluation sentences stay: the 2 images they left with one caption keep their pair, and 64 more
    # captions are found shared by several images (those sentences, e.g. STS-B's image captions)
    assert datamodule.heldout_dropped == 0 and len(rows) == 27262
    assert datamodule.source.counts == {**SHARED_COUNTS, "captions_heldout_sentences": 0, "captions_of_several_images": 614,
                                        "images_with_under_two_captions": 0, "pairs": 27262}
    # Flickr8k's own dev/test captions (another file than Flickr30K's captions of the same photos) are data.heldout's
    # job: without it, Flickr30K train captions equal to them (punctuation folded) stay; with it none does (above)
    photos = {image_identity(n) for s in ("dev", "test")
              for n in (data_root / f"flickr8k_224/text/Flickr_8k.{s}Images.txt").read_text().split()}
    texts = {normalise_caption(t) for c in ("sent0", "sent1") for t in rows[c]}
    assert texts & _flickr8k_dev_test_captions(data_root, photos)


@pytest.mark.slow
def test_two_training_steps_on_caption_pairs(tiny_smol_llava_dir, tmp_path):
    from mmembed.run.training import run_training
    from tests.pipeline.helpers import compose_train

    cfg = compose_train(["experiment=text_only", "data=flickr30k_caption_pairs", "model.text_only=true", "val=none",
                         f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2", "data.batch_size=4",
                         "validate_before_training=false", "~logger", "lora.r=4", "heldout=none"], tmp_path)
    summary = run_training(cfg)
    assert summary["global_step"] == 2 and summary["metrics"]["train/loss"] > 0
    assert summary["metrics"]["train/num_negatives"] == 4 - 1  # the other rows' positives; no hard negatives
