"""Image-caption retrieval benchmarks: COCO caption JSON, Karpathy `dataset_*.json`, Flickr8k-style CSV.

Each reader returns a `CaptionBenchmark`: unique images (each embedded once) and captions pointing at
their image by index, in file order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.benchmarks.layout import BenchmarkLayoutError, require

COCO_LAYOUT = """
<captions_json>: COCO captions file (e.g. captions_val2017.json) with "images" [{id, file_name}] and
    "annotations" [{image_id, caption}]
<image_dir>/<file_name> for every image listed
"""
KARPATHY_LAYOUT = """
<karpathy_json>: dataset_coco.json / dataset_flickr30k.json with "images" [{filename, [filepath],
    split, sentences: [{raw}]}]
<image_root>/[<filepath>/]<filename>   (COCO: image_root holds train2014/ and val2014/)
"""
CSV_LAYOUT = """
<captions_csv>: a header line "image,caption", then one "<file name>,<caption>" row per caption
<image_dir>/<file name> for every image named
"""


@dataclass
class CaptionBenchmark:
    """Images and their captions; `caption_image[j]` is the index into `images` that caption j describes."""

    name: str
    images: list[Path]
    image_ids: list[str]
    captions: list[str]
    caption_image: list[int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.captions) != len(self.caption_image) or len(self.images) != len(self.image_ids):
            raise ValueError(f"{self.name}: inconsistent lengths")
        if self.caption_image and not 0 <= min(self.caption_image) <= max(self.caption_image) < len(self.images):
            raise ValueError(f"{self.name}: caption points at no image")

    def subset(self, keep_images: list[int]) -> CaptionBenchmark:
        """Only the images at `keep_images` (e.g. those that could be read) and their captions."""
        remap = {old: new for new, old in enumerate(keep_images)}
        pairs = [(c, remap[i]) for c, i in zip(self.captions, self.caption_image) if i in remap]
        return CaptionBenchmark(
            self.name,
            [self.images[i] for i in keep_images],
            [self.image_ids[i] for i in keep_images],
            [c for c, _ in pairs],
            [i for _, i in pairs],
            dict(self.meta),
        )

    def image_range(self, start: int | None, stop: int | None) -> CaptionBenchmark:
        """The images at positions [start, stop) of the *file-name-sorted* image list, and their captions.

        A fixed, order-independent split: Flickr8k's 1000 local images sorted by name give
        [0, 800) for training and [800, 1000) for testing, whatever order the caption file lists them in.
        """
        ordered = sorted(range(len(self.images)), key=lambda i: self.image_ids[i])
        keep = sorted(ordered[slice(start, stop)])
        out = self.subset(keep)
        out.meta["image_range"] = [start, stop]
        return out


def _check_images(name: str, image_dir: Path, images: list[Path], layout: str) -> None:
    missing = [p for p in images if not p.is_file()]
    if missing:
        shown = f"{len(missing)} of {len(images)} images, e.g. {missing[0]}"
        raise BenchmarkLayoutError(name, image_dir, layout, [shown])


def _limit(images: list[str], captions: list[tuple[str, str]], max_images: int | None):
    if max_images is None:
        return images, captions
    keep = set(images[:max_images])
    return images[:max_images], [(img, cap) for img, cap in captions if img in keep]


def _build(name, image_dir, ordered, captions, meta, layout, check_images: bool = True) -> CaptionBenchmark:
    index = {img: i for i, img in enumerate(ordered)}
    paths = [Path(image_dir) / img for img in ordered]
    if check_images:  # training readers leave missing files to the image loader's on_error policy
        _check_images(name, Path(image_dir), paths, layout)
    return CaptionBenchmark(name, paths, list(ordered), [c for _, c in captions], [index[i] for i, _ in captions], meta)


def read_coco_captions(
    captions_json: str | Path,
    image_dir: str | Path,
    name: str = "coco",
    max_images: int | None = None,
    check_images: bool = True,
) -> CaptionBenchmark:
    """COCO `captions_*.json` (images + annotations), images in `image_dir` by `file_name`."""
    captions_json = Path(captions_json)
    require(name, captions_json.parent, [captions_json.name], COCO_LAYOUT)
    require(name, image_dir, [], COCO_LAYOUT)
    data = json.loads(captions_json.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise BenchmarkLayoutError(name, captions_json, COCO_LAYOUT, ['"images" / "annotations" keys'])
    file_of = {img["id"]: img["file_name"] for img in data["images"]}
    ordered = [img["file_name"] for img in data["images"]]
    captions = [(file_of[a["image_id"]], a["caption"].strip()) for a in data["annotations"] if a["image_id"] in file_of]
    ordered, captions = _limit(ordered, captions, max_images)
    meta = {"format": "coco_json", "captions_file": str(captions_json), "image_dir": str(image_dir)}
    return _build(name, image_dir, ordered, captions, meta, COCO_LAYOUT, check_images)


def read_karpathy(
    karpathy_json: str | Path,
    image_root: str | Path,
    split: str = "test",
    name: str | None = None,
    max_images: int | None = None,
    check_images: bool = True,
) -> CaptionBenchmark:
    """Karpathy split file (`dataset_coco.json`: 5k test; `dataset_flickr30k.json`: 1k test), `raw` captions."""
    karpathy_json = Path(karpathy_json)
    name = name or f"{karpathy_json.stem.removeprefix('dataset_')}-{split}"
    require(name, karpathy_json.parent, [karpathy_json.name], KARPATHY_LAYOUT)
    require(name, image_root, [], KARPATHY_LAYOUT)
    data = json.loads(karpathy_json.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data:
        raise BenchmarkLayoutError(name, karpathy_json, KARPATHY_LAYOUT, ['"images" key'])
    ordered, captions = [], []
    for img in data["images"]:
        if img.get("split") != split:
            continue
        rel = str(Path(img.get("filepath", "")) / img["filename"])
        ordered.append(rel)
        captions.extend((rel, s["raw"].strip()) for s in img["sentences"])
    if not ordered:
        splits = sorted({img.get("split") for img in data["images"]}, key=str)
        raise ValueError(f"{karpathy_json}: no images in split {split!r}; splits present: {splits}")
    ordered, captions = _limit(ordered, captions, max_images)
    meta = {"format": "karpathy", "captions_file": str(karpathy_json), "image_dir": str(image_root), "split": split}
    return _build(name, image_root, ordered, captions, meta, KARPATHY_LAYOUT, check_images)


def read_caption_csv(
    captions_csv: str | Path,
    image_dir: str | Path,
    name: str = "flickr8k",
    max_images: int | None = None,
    check_images: bool = True,
) -> CaptionBenchmark:
    """Flickr8k-style CSV (`image,caption` header; captions with commas are quoted)."""
    captions_csv = Path(captions_csv)
    require(name, captions_csv.parent, [captions_csv.name], CSV_LAYOUT)
    require(name, image_dir, [], CSV_LAYOUT)
    with captions_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "caption"]:
        raise BenchmarkLayoutError(name, captions_csv, CSV_LAYOUT, ['header "image,caption"'])
    ordered, seen, captions = [], set(), []
    for row in rows[1:]:
        if not row:
            continue
        img, caption = row[0].strip(), ",".join(row[1:]).strip()
        if img not in seen:
            seen.add(img)
            ordered.append(img)
        captions.append((img, caption))
    ordered, captions = _limit(ordered, captions, max_images)
    meta = {"format": "caption_csv", "captions_file": str(captions_csv), "image_dir": str(image_dir)}
    return _build(name, image_dir, ordered, captions, meta, CSV_LAYOUT, check_images)


CAPTION_FORMATS = ("caption_csv", "coco_json", "karpathy")


def read_caption_config(cfg: Mapping, check_images: bool = True) -> CaptionBenchmark:
    """A caption file from its config mapping: `format` (caption_csv / coco_json / karpathy),
    `captions`, `images`, optional `name`, `max_images`, `split` (karpathy) and `image_range: [start, stop]`,
    which keeps that slice of the name-sorted images (e.g. Flickr8k's held-out [800, 1000))."""
    fmt, name, limit = cfg.get("format"), cfg.get("name"), cfg.get("max_images")
    if fmt not in CAPTION_FORMATS:
        raise ValueError(f"{name or 'captions'}: unknown caption format {fmt!r}; expected one of {CAPTION_FORMATS}")
    missing = [key for key in ("captions", "images") if not cfg.get(key)]
    if missing:
        raise ValueError(f"{name or fmt}: missing setting(s) {missing}")
    captions, images = cfg["captions"], cfg["images"]
    if fmt == "caption_csv":
        bench = read_caption_csv(captions, images, name or "captions", limit, check_images)
    elif fmt == "coco_json":
        bench = read_coco_captions(captions, images, name or "coco", limit, check_images)
    else:
        bench = read_karpathy(captions, images, cfg.get("split") or "test", name, limit, check_images)
    return select_image_range(bench, cfg.get("image_range"))


def select_image_range(bench: CaptionBenchmark, image_range) -> CaptionBenchmark:
    """`bench.image_range(start, stop)` for a configured `[start, stop]` (None: all images), refusing an empty slice."""
    if image_range is None:
        return bench
    if len(image_range) != 2:
        raise ValueError(f"{bench.name}: image_range must be [start, stop], got {list(image_range)}")
    bench = bench.image_range(*image_range)
    if not bench.images:
        raise ValueError(f"{bench.name}: image_range {list(image_range)} selects no image")
    return bench
