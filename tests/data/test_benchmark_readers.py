"""Caption, CIRR, FashionIQ and zero-shot readers: tmp fixtures in the release formats + the real copies."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmembed.data.evalsets.captions import read_caption_csv, read_coco_captions, read_flickr8k_token, read_karpathy
from mmembed.data.evalsets.cir import join_fiq_captions, read_cirr, read_fashioniq
from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.data.evalsets.zeroshot import read_zeroshot
from mmembed.data.images import load_image
from mmembed.errors import BadImageError


def _img(path, color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


# ---- captions ----
def test_coco_json_tmp(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _img(tmp_path / "imgs" / name)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "B one "},
            {"image_id": 7, "id": 2, "caption": "A one"},
            {"image_id": 3, "id": 5, "caption": "B two"},
        ],
    }
    (tmp_path / "caps.json").write_text(json.dumps(data))
    b = read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs")
    assert b.image_ids == ["a.jpg", "b.jpg"]
    assert b.captions == ["B one", "A one", "B two"] and b.caption_image == [1, 0, 1]
    assert read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs", max_images=1).captions == ["A one"]
    (tmp_path / "imgs" / "b.jpg").unlink()
    with pytest.raises(BenchmarkLayoutError, match="1 of 2 images"):
        read_coco_captions(tmp_path / "caps.json", tmp_path / "imgs")


def test_karpathy_tmp(tmp_path):
    _img(tmp_path / "val2014" / "x.jpg")
    _img(tmp_path / "val2014" / "y.jpg")
    data = {
        "dataset": "coco",
        "images": [
            {"filepath": "val2014", "filename": "x.jpg", "split": "test", "sentences": [{"raw": "x1"}, {"raw": "x2"}]},
            {"filepath": "val2014", "filename": "y.jpg", "split": "train", "sentences": [{"raw": "y1"}]},
        ],
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    b = read_karpathy(tmp_path / "dataset_coco.json", tmp_path, split="test")
    assert b.name == "coco-test" and b.images == [tmp_path / "val2014" / "x.jpg"]
    assert b.captions == ["x1", "x2"] and b.caption_image == [0, 0]
    with pytest.raises(ValueError, match="splits present"):
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path, split="val")


def test_caption_csv_tmp_and_missing(tmp_path):
    _img(tmp_path / "i" / "p.jpg")
    (tmp_path / "c.txt").write_text('image,caption\np.jpg,"a dog , running"\np.jpg,plain\n')
    b = read_caption_csv(tmp_path / "c.txt", tmp_path / "i")
    assert b.captions == ["a dog , running", "plain"] and b.caption_image == [0, 0]
    with pytest.raises(BenchmarkLayoutError) as err:
        read_caption_csv(tmp_path / "nothing" / "c.txt", tmp_path / "i")
    assert "nothing" in str(err.value) and "expected layout" in str(err.value)


def test_real_caption_sets(data_root):
    f8 = read_caption_csv(data_root / "flickr8k/captions_1000imgs.txt", data_root / "flickr8k/images")
    assert len(f8.images) == 1000 and len(f8.captions) == 5000
    assert all(f8.caption_image.count(i) == 5 for i in (0, 500, 999))
    coco = read_coco_captions(data_root / "coco/captions_train2017_subset80.json", data_root / "coco/train2017")
    assert len(coco.images) == 80 and len(coco.captions) == 400


def _captions_by_image(bench) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for caption, i in zip(bench.captions, bench.caption_image):
        out.setdefault(bench.image_ids[i], []).append(caption)
    return out


def test_official_token_file_holds_the_kaggle_csv_captions(data_root):
    """Flickr8k.token.txt and the Kaggle `image,caption` file read to the same captions, in the same order."""
    kaggle = _captions_by_image(read_caption_csv(data_root / "flickr8k/captions_1000imgs.txt", data_root / "flickr8k/images"))
    token = read_flickr8k_token(data_root / "flickr8k_224/text/Flickr8k.token.txt", data_root / "flickr8k/images",
                                check_images=False)  # the whole file: 8,092 names, most not in this folder
    assert len(token.images) == 8092 and len(token.captions) == 40459 and token.meta["malformed_lines_skipped"] == 1
    by_image = _captions_by_image(token)
    assert len(kaggle) == 1000 and all(by_image[img] == caps for img, caps in kaggle.items())


# ---- images ----
def test_unreadable_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert load_image(bad, on_error="skip") is None
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_image(bad)
    assert load_image(_img(tmp_path / "ok.png")).mode == "RGB"


# ---- CIRR ----
def _cirr_fixture(root, names=("dev-1-img0", "dev-2-img1", "dev-3-img0")):
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "image_splits/split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    caps = [
        {"pairid": 5, "reference": names[0], "target_hard": names[1], "target_soft": {names[1]: 1.0},
         "caption": "add a dog ", "img_set": {"id": 1, "members": list(names)}},
        {"pairid": 6, "reference": names[2], "target_hard": names[0], "target_soft": {},
         "caption": "remove it", "img_set": {"id": 2, "members": list(names)}},
    ]
    (root / "captions/cap.rc2.val.json").write_text(json.dumps(caps))
    return names


def test_cirr_tmp_official_layout_and_flat_folder(tmp_path):
    names = _cirr_fixture(tmp_path / "cirr")
    for n in names:
        _img(tmp_path / "img_raw" / "dev" / f"{n}.png")
    b = read_cirr(tmp_path / "cirr", image_root=tmp_path / "img_raw")
    assert [q.qid for q in b.queries] == [5, 6] and b.queries[0].caption == "add a dog"
    assert b.queries[0].target == names[1] and b.queries[0].members == list(names)
    assert list(b.gallery) == list(names) and b.gallery[names[2]] == tmp_path / "img_raw/dev/dev-3-img0.png"
    # flat folder with only two images: 'split' refuses, 'available' keeps the answerable query
    flat = tmp_path / "flat"
    _img(flat / f"{names[0]}.png")
    _img(flat / f"{names[1]}.png")
    with pytest.raises(BenchmarkLayoutError, match="1 of 3 images"):
        read_cirr(tmp_path / "cirr", image_dir=flat)
    b = read_cirr(tmp_path / "cirr", image_dir=flat, gallery="available")
    assert [q.qid for q in b.queries] == [5] and b.meta["queries_dropped"] == 1 and b.meta["missing_images"] == 1


def test_cirr_missing_folder(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="split.rc2.val.json"):
        read_cirr(tmp_path)


def test_real_cirr_local_subset(data_root):
    root = data_root / "cirr"
    b = read_cirr(
        root, captions_file=root / "cap.rc2.val.local_subset12.json", image_dir=root / "images_dev_subset",
        gallery="available",
    )
    assert len(b.queries) == 12 and len(b.gallery) == 13 and b.meta["split_images"] == 2297
    with pytest.raises(BenchmarkLayoutError):
        read_cirr(root, image_dir=root / "images_dev_subset")  # the full val gallery is not here


# ---- FashionIQ ----
def test_fashioniq_tmp(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    caps = [{"target": "T1", "candidate": "C1", "captions": ["is shiny.", " has no sleeves?"]}]
    (tmp_path / "captions/cap.toptee.val.json").write_text(json.dumps(caps))
    (tmp_path / "image_splits/split.toptee.val.json").write_text(json.dumps(["C1", "T1", "X"]))
    for n in ("C1", "T1", "X"):
        _img(tmp_path / "images" / f"{n}.png")
    b = read_fashioniq(tmp_path, "toptee")
    assert b.queries[0].caption == "is shiny, has no sleeves" and b.queries[0].reference == "C1"
    assert b.meta["prompt_category"] == "shirt" and list(b.gallery) == ["C1", "T1", "X"]
    assert join_fiq_captions(["a.", "b"]) == "a, b"


def test_real_fashioniq_has_no_images(data_root):
    with pytest.raises(BenchmarkLayoutError, match="images"):
        read_fashioniq(data_root / "fashioniq", "dress")


# ---- zero-shot ----
def test_zeroshot_tmp_both_layouts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/classes.tsv").write_text(
        "class_index\twnid\tclass_name\tfile_name\n1\tn2\tgreat_white_shark\ts.JPEG\n0\tn1\ttench\tt.JPEG\n"
    )
    _img(tmp_path / "a/images/t.JPEG")
    _img(tmp_path / "a/images/s.JPEG")
    b = read_zeroshot(tmp_path / "a")
    assert b.class_names == ["tench", "great white shark"]
    assert b.labels == [0, 1] and b.images[0].name == "t.JPEG"
    (tmp_path / "b").mkdir()
    (tmp_path / "b/classes.tsv").write_text("class_index\twnid\tclass_name\n0\tn1\ttench\n1\tn2\tgoldfish\n")
    _img(tmp_path / "b/images/n2/x1.JPEG")
    _img(tmp_path / "b/images/n2/x2.JPEG")
    _img(tmp_path / "b/images/n1/y.JPEG")
    b = read_zeroshot(tmp_path / "b")
    assert b.labels == [0, 1, 1] and [p.name for p in b.images] == ["y.JPEG", "x1.JPEG", "x2.JPEG"]
    with pytest.raises(BenchmarkLayoutError, match="classes.tsv"):
        read_zeroshot(tmp_path / "c")


def test_real_imagenet_sample(data_root):
    b = read_zeroshot(data_root / "imagenet_sample")
    assert len(b.class_names) == 1000 and len(b.images) == 1000 and b.labels == list(range(1000))
    assert b.class_names[2] == "great white shark"


def test_caption_json_with_split_lists_renamed_images_and_a_partial_copy(tmp_path):
    """Flickr30K as shipped by BLIP/LAVIS (json list or jsonl.gz of {image, caption[]}) + Karpathy's split lists;
    `image_names` maps a caption-file name to the file on disk; `missing_images: drop` reads a partial copy."""
    import gzip
    import json

    from PIL import Image

    from mmembed.data.evalsets.captions import read_caption_config
    from mmembed.errors import MMEmbedError

    items = [{"image": "1.jpg", "caption": ["A dog runs.", "A dog."]}, {"image": "2.jpg", "caption": ["Two kids."]},
             {"image": "3.jpg", "caption": "A cat."}]
    with gzip.open(tmp_path / "all.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(i) for i in items))
    (tmp_path / "test.txt").write_text("1.jpg\n3.jpg\n")
    (tmp_path / "train.txt").write_text("2.jpg\n")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "1_abcdef0123.jpg")
    (tmp_path / "names.csv").write_text("flickr30k_file,flickr8k_file\n1.jpg,1_abcdef0123.jpg\n")
    cfg = {"format": "caption_json", "captions": str(tmp_path / "all.jsonl.gz"), "images": str(tmp_path / "images"),
           "image_names": str(tmp_path / "names.csv"), "split": "test",
           "split_files": {"test": str(tmp_path / "test.txt"), "train": str(tmp_path / "train.txt")}}
    with pytest.raises(MMEmbedError, match="1 of 2 images"):
        read_caption_config(cfg)  # an evaluation reads every image, unless told the copy is partial
    bench = read_caption_config({**cfg, "missing_images": "drop"})
    assert [p.name for p in bench.images] == ["1_abcdef0123.jpg"] and bench.image_ids == ["1.jpg"]
    assert bench.captions == ["A dog runs.", "A dog."] and bench.meta["images_not_found"] == 1


def test_image_identity_matches_a_flickr8k_file_and_its_flickr30k_name():
    from mmembed.data.heldout import drop_heldout_images, image_identity

    assert image_identity("/x/1007129816_e794419615.jpg") == image_identity("1007129816.jpg") == "1007129816"
    assert image_identity("coco/000000391895.jpg") == "000000391895" and image_identity("img_001.png") == "img_001"
    rows = [{"image": "/a/1007129816_e794419615.jpg", "text": "x"}, {"image": "/a/5_0123456789.jpg", "text": "y"}]
    kept, dropped = drop_heldout_images(rows, ["image"], frozenset({"1007129816"}))
    assert dropped == 1 and kept == rows[1:]
