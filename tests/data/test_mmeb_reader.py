"""MMEB eval files read unchanged (jsonl, json, parquet, the Hugging Face folder layout), and the local
mini-MMEB built from the shared data: deterministic, in MMEB's format, eval images disjoint from training."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.data.evalsets.mmeb import MMEBInput, read_mmeb
from mmembed.errors import DataConfigError
from tests.conftest import REPO

V1_ROWS = [  # MMEB-V1 (TIGER-Lab/MMEB-eval): the instruction is inside qry_text
    {"qry_text": "<|image_1|> Represent the given image for classification", "qry_img_path": "cls/a.jpg",
     "tgt_text": ["tench", "goldfish"], "tgt_img_path": ["", ""]},
    {"qry_text": "Find me an everyday image that matches the given caption: A dog.", "qry_img_path": "",
     "tgt_text": ["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."],
     "tgt_img_path": ["t2i/dog.jpg", "t2i/cat.jpg"]},
]
V2_ROWS = [  # MMEB-V2's image sets: the instruction in qry_inst / tgt_inst
    {"qry_inst": "<|image_1|> Locate the region:", "qry_text": "a red car", "qry_img_path": "g/full.jpg",
     "tgt_inst": "<|image_1|> Represent the given cropped image of the object.", "tgt_text": ["", ""],
     "tgt_img_path": ["g/crop0.jpg", "g/crop1.jpg"]},
]


def _images(root: Path, rows) -> None:
    for row in rows:
        for rel in [row["qry_img_path"], *row["tgt_img_path"]]:
            if rel:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (4, 4)).save(root / rel)


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_and_parquet_in_mmeb_format_read_with_placeholders_replaced(tmp_path):
    images = tmp_path / "images"
    _images(images, V1_ROWS + V2_ROWS)
    _jsonl(tmp_path / "eval/ImageNet-1K.jsonl", V1_ROWS)
    pq.write_table(pa.Table.from_pylist(V2_ROWS), tmp_path / "eval/Grounding.parquet")
    (tmp_path / "eval/Grounding.meta.json").write_text('{"meta_task": "grounding", "distribution": "OOD"}')
    sets = {d.name: d for d in read_mmeb(tmp_path / "eval", images)}
    assert list(sets) == ["Grounding", "ImageNet-1K"]  # file stems, sorted
    cls, t2i = sets["ImageNet-1K"].queries
    assert cls.query == MMEBInput("<image> Represent the given image for classification", images / "cls/a.jpg")
    assert cls.candidates == (MMEBInput("tench"), MMEBInput("goldfish"))  # gold first, as stored
    assert t2i.query == MMEBInput("Find me an everyday image that matches the given caption: A dog.")
    assert t2i.candidates[1] == MMEBInput("<image>\nRepresent the given image.", images / "t2i/cat.jpg")
    assert [cls.query.modality, t2i.query.modality, t2i.candidates[0].modality] == ["image+text", "text", "image+text"]
    (g,) = sets["Grounding"].queries  # instruction + text joined by one space
    assert g.query == MMEBInput("<image> Locate the region: a red car", images / "g/full.jpg")
    crop = MMEBInput("<image> Represent the given cropped image of the object.", images / "g/crop0.jpg")
    assert g.candidates[0] == crop
    assert sets["Grounding"].file_meta == {"meta_task": "grounding", "distribution": "OOD"}
    assert sets["ImageNet-1K"].file_meta == {} and sets["ImageNet-1K"].rows_in_file == 2


def test_hugging_face_folder_of_shards_and_a_single_file(tmp_path):
    rows = V1_ROWS * 3
    _images(tmp_path, rows)
    for k, shard in enumerate([rows[:4], rows[4:]]):  # test-00000-of-00002.parquet, ...
        (tmp_path / "MMEB-eval/N24News").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(shard), tmp_path / f"MMEB-eval/N24News/test-0000{k}-of-00002.parquet")
    (tmp_path / "MMEB-eval/N24News/meta.json").write_text('{"note": "x"}')
    (d,) = read_mmeb(tmp_path / "MMEB-eval", image_root=tmp_path)
    assert d.name == "N24News" and len(d.queries) == 6 and d.file_meta == {"note": "x"}
    assert [q.query.image for q in d.queries[:2]] == [tmp_path / "cls/a.jpg", None]
    (single,) = read_mmeb(_write_json_array(tmp_path / "one/VOC2007.json", V1_ROWS), tmp_path, max_queries=1)
    assert single.name == "VOC2007" and len(single.queries) == 1 and single.rows_in_file == 2


def _write_json_array(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def test_placeholder_rules(tmp_path):
    rows = [
        # the image marked in both instruction and text: one image, one placeholder
        {"qry_inst": "<|image_1|> Q:", "qry_text": "<|image_1|> what?", "qry_img_path": "a.jpg",
         # an image nobody marked: put first, as MMEB's own code does; an image with no text at all
         "tgt_text": ["a cat", ""], "tgt_img_path": ["a.jpg", "a.jpg"]},
    ]
    _images(tmp_path, rows)
    (q,) = read_mmeb(_jsonl(tmp_path / "x.jsonl", rows), tmp_path)[0].queries
    assert q.query == MMEBInput("<image> Q: what?", tmp_path / "a.jpg")
    assert q.candidates == (MMEBInput("<image>\na cat", tmp_path / "a.jpg"), MMEBInput("<image>", tmp_path / "a.jpg"))
    assert q.candidates[1].modality == "image"


def test_bad_files_name_the_file_and_what_to_fix(tmp_path):
    bad = _jsonl(tmp_path / "Bad.jsonl", [{"qry_text": "x", "tgt_text": ["a"]}])
    with pytest.raises(DataConfigError,
                       match=r"Bad\.jsonl: missing MMEB column\(s\) \['qry_img_path', 'tgt_img_path'\]"):
        read_mmeb(bad)
    ragged = _jsonl(tmp_path / "r/R.jsonl", [{"qry_text": "x", "qry_img_path": "", "tgt_text": ["a", "b"],
                                              "tgt_img_path": [""]}])
    with pytest.raises(DataConfigError, match=r"R\.jsonl row 0: tgt_text and tgt_img_path must be lists of one length"):
        read_mmeb(ragged)
    marked = _jsonl(tmp_path / "m/M.jsonl", [{"qry_text": "<|image_1|> x", "qry_img_path": "", "tgt_text": ["a"],
                                              "tgt_img_path": [""]}])
    with pytest.raises(DataConfigError, match=r"M\.jsonl row 0: the text marks an image .* gives no image path"):
        read_mmeb(marked)
    missing = _jsonl(tmp_path / "i/I.jsonl", [{"qry_text": "x", "qry_img_path": "nowhere.jpg", "tgt_text": ["a"],
                                               "tgt_img_path": [""]}])
    with pytest.raises(BenchmarkLayoutError, match=r"1 of 1 images.*nowhere\.jpg"):
        read_mmeb(missing)
    with pytest.raises(BenchmarkLayoutError, match=r"absent \(build it with: make it\)"):
        read_mmeb(tmp_path / "absent", hint="build it with: make it")
    with pytest.raises(DataConfigError, match=r"MMEB datasets \['Nope'\] are not in"):
        read_mmeb(tmp_path / "i", datasets=["Nope"])


# ---- the mini-MMEB built from the shared data ----
LIMIT = 6
EVAL_COLUMNS = ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]
TRAIN_COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]


@pytest.fixture(scope="module")
def two_builds(data_root, tmp_path_factory):
    pytest.importorskip("easy_vqa")
    from mmembed.prep.mini_mmeb.build import build_mini_mmeb

    root = tmp_path_factory.mktemp("mini_mmeb")
    counts = build_mini_mmeb(data_root, root / "a", limit=LIMIT)
    # the second build through the command line, in a process with another string-hash seed: set or dict
    # order that depended on it would show as a byte difference
    env = {**os.environ, "PYTHONHASHSEED": "12345", "MMEMBED_DATA": str(data_root)}
    proc = subprocess.run([sys.executable, str(REPO / "experiments/build_mini_mmeb.py"), "--limit", str(LIMIT),
                           "--out", str(root / "b")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["eval"] == counts["eval"]
    return counts, root


def _tree(root: Path) -> dict[str, bytes | str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


@pytest.mark.slow  # two builds: ~30 s on the shared 2-core machine
def test_mini_mmeb_build_is_deterministic_and_in_mmeb_format(two_builds):
    counts, root = two_builds
    a, b = _tree(root / "a"), _tree(root / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)][:5]
    names = ["CIRR-12", "Flickr30k-Entities-8k", "Flickr8k_i2t", "Flickr8k_t2i", "ImageNet-sample", "easy-VQA"]
    assert sorted(counts["eval"]) == names
    assert sorted(counts["train"]) == ["Flickr30k-Entities-8k", "Flickr8k_concepts", "Flickr8k_i2t", "Flickr8k_t2i",
                                       "easy-VQA"]
    for name in names:
        rows = [json.loads(line) for line in (root / "a/eval" / f"{name}.jsonl").read_text().splitlines()]
        assert rows and all(list(r) == EVAL_COLUMNS for r in rows), name
        assert all(len(r["tgt_text"]) == len(r["tgt_img_path"]) >= 2 for r in rows), name
    assert counts["eval"]["easy-VQA"]["candidates_per_query"] == [13, 13]  # the 13 answers of easy-VQA
    assert counts["eval"]["Flickr8k_t2i"]["candidates_per_query"] == [LIMIT, LIMIT]  # gold + every other image
    for name in counts["train"]:
        rows = [json.loads(line) for line in (root / "a/train" / f"{name}.jsonl").read_text().splitlines()]
        assert rows and all(list(r) == TRAIN_COLUMNS for r in rows), name
    sets = {d.name: d for d in read_mmeb(root / "a/eval", root / "a/images")}  # every image present
    assert sets["ImageNet-sample"].file_meta["distribution"] == "OOD" and sets["easy-VQA"].file_meta["synthetic"]
    assert "NOT zero-shot" in (root / "a/README.md").read_text()


def _realpaths(root: Path, split: str) -> set[Path]:
    """Source images of the eval (or train) rows, grounding crops traced back to the image they were cut from."""
    crops = {}
    for line in (root / "images/crops.tsv").read_text().splitlines()[1:]:
        crop, source, _ = line.split("\t")
        crops[crop] = source
    keys = {"eval": ("qry_img_path", "tgt_img_path"),
            "train": ("qry_image_path", "pos_image_path", "neg_image_path")}[split]
    rels = set()
    for file in (root / split).glob("*.jsonl"):
        for row in map(json.loads, file.read_text().splitlines()):
            for key in keys:
                rels |= {p for p in (row[key] if isinstance(row[key], list) else [row[key]]) if p}
    return {(root / "images" / crops.get(rel, rel)).resolve() for rel in rels}


def _sha(paths) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.mark.slow
def test_mini_mmeb_eval_images_are_never_training_images(two_builds, data_root):
    from mmembed.data.image_text import read_image_text_sources

    _, root = two_builds
    built = root / "a"
    eval_images, train_images = _realpaths(built, "eval"), _realpaths(built, "train")
    assert eval_images and train_images and not eval_images & train_images
    assert not _sha(eval_images) & _sha(train_images)
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):  # every configured training source
        paths = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "paths" / "default.yaml"), {"data_root": str(data_root)})
        cfg = OmegaConf.create({"paths": paths, "data": OmegaConf.load(path)})  # ${paths.flickr8k.*} resolve
        if "sources" not in cfg.data:
            continue
        pairs = read_image_text_sources(OmegaConf.to_container(cfg.data.sources, resolve=True))
        sources = {Path(p.image).resolve() for p in pairs}
        assert not eval_images & sources, path.stem
        assert not {p.name for p in eval_images} & {p.name for p in sources}, path.stem  # any copy of an image
        assert not _sha(eval_images) & _sha(sources), path.stem


def test_grounding_boxes_are_normalised_by_the_original_size():
    from mmembed.prep.mini_mmeb.grounding import ENTITIES, pixel_box, scale_box

    data_root = Path(os.environ.get("MMEMBED_DATA", REPO.parent / "shared" / "data"))
    with gzip.open(data_root / ENTITIES, "rt") as f:
        rows = [json.loads(next(f)) for _ in range(20)]
    checked = 0
    for row in rows:  # the file's own 224 px boxes, rounded to 0.1: the same scaling
        for chain, boxes in row["boxes_xyxy_orig"].items():
            for box, box224 in zip(boxes, row["boxes_xyxy_224"][chain]):
                ours = scale_box(box, (row["orig_width"], row["orig_height"]), (224, 224))
                assert ours == pytest.approx(box224, abs=0.051)
                checked += 1
    assert checked > 50
    # a 500x375 original's box on a 200x150 rendition: halved... times 0.4
    assert scale_box((100, 75, 300, 225), (500, 375), (200, 150)) == pytest.approx((40, 30, 120, 90))
    assert pixel_box((0.4, 1.6, 10.2, 150.0), (200, 150)) == (0, 1, 11, 150)
