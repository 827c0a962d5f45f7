"""`captions_per_image: k` (a caption benchmark's setting): each image's first k captions, in file order; the
held-out filter still drops every caption of those images."""

from __future__ import annotations

import pytest
from PIL import Image

from mmembed.data.evalsets.captions import read_caption_config
from mmembed.data.heldout import heldout_sentences, normalise_caption
from mmembed.errors import DataConfigError


@pytest.fixture
def caption_csv(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "i").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "i" / name)
    rows = ["a.jpg,a one", "b.jpg,b one", "a.jpg,a two", "b.jpg,b two", "a.jpg,a three"]
    (tmp_path / "c.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return {"format": "caption_csv", "captions": str(tmp_path / "c.csv"), "images": str(tmp_path / "i")}


def test_the_first_k_captions_of_each_image_in_file_order(caption_csv):
    full = read_caption_config(caption_csv)
    assert full.captions == ["a one", "b one", "a two", "b two", "a three"]
    one = read_caption_config(dict(caption_csv, captions_per_image=1))
    assert (one.captions, one.caption_image, one.images) == (["a one", "b one"], [0, 1], full.images)
    two = read_caption_config(dict(caption_csv, captions_per_image=2))
    assert two.captions == ["a one", "b one", "a two", "b two"] and two.meta["captions_per_image"] == 2


def test_zero_captions_per_image_is_refused(caption_csv):
    with pytest.raises(DataConfigError, match="captions_per_image must be >= 1"):
        read_caption_config(dict(caption_csv, captions_per_image=0))


def test_the_heldout_filter_holds_out_every_caption_not_only_the_scored_ones(caption_csv):
    held = heldout_sentences({"val_set": dict(caption_csv, captions_per_image=1)})
    assert held == {normalise_caption(c) for c in ["a one", "b one", "a two", "b two", "a three"]}
