"""Image-caption retrieval benchmarks: COCO caption JSON, Karpathy `dataset_*.json`, Flickr8k-style CSV and
Flickr8k's own `Flickr8k.token.txt`.

Each reader returns a `CaptionBenchmark` (caption_benchmark.py): unique images (each embedded once) and
captions pointing at their image by index, in file order. `read_caption_config` adds the official splits (`split` +
`split_files`, see `caption_splits`) and image folders searched in order (`images: [dir1, dir2]`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mmembed.data.evalsets.caption_benchmark import CaptionBenchmark
from mmembed.data.evalsets.caption_files import (
    CAPTION_JSON_LAYOUT,
    COCO_LAYOUT,
    CSV_LAYOUT,
    KARPATHY_LAYOUT,
    TOKEN_LAYOUT,
    parse_caption_csv,
    parse_caption_json,
    parse_coco,
    parse_flickr8k_token,
    parse_karpathy,
    read_image_names,
)
from mmembed.data.evalsets.caption_splits import image_folders, locate_images, select_split
from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.errors import DataConfigError

log = logging.getLogger(__name__)


def _limit(images: list[str], captions: list[tuple[str, str]], max_images: int | None):
    if max_images is None:
        return images, captions
    keep = set(images[:max_images])
    return images[:max_images], [(img, cap) for img, cap in captions if img in keep]


def _build(name, images, ordered, captions, meta, layout, check_images=True, max_images=None, drop_missing=False,
           renames=None, allow_missing=False):
    """The benchmark of `ordered` images (file names, found in the folder(s) `images`) and their captions.

    An image no folder holds raises with `check_images` (evaluation), is dropped and counted with
    `drop_missing` (training on a split: the split file lists images a partial copy may lack), and is
    otherwise left to the image loader's on_error policy (training without a split).
    """
    folders = image_folders(name, images, layout)
    on_disk = {img: (renames or {}).get(img, img) for img in ordered}  # `image_names`: the file a name is stored as
    located = locate_images(list(dict.fromkeys(on_disk.values())), folders, search=check_images or drop_missing)
    found = {img: located[on_disk[img]] for img in ordered}
    missing = [img for img in ordered if found[img] is None]
    if missing and check_images and not allow_missing:
        shown = f"{len(missing)} of {len(ordered)} images, e.g. {folders[0] / missing[0]}"
        raise BenchmarkLayoutError(name, ", ".join(map(str, folders)), layout, [shown])
    if drop_missing:
        meta["images_not_found"] = len(missing)
    if missing and drop_missing:
        log.info("%s: %d of %d image(s) of the split are in none of %s; dropped with their captions",
                 name, len(missing), len(ordered), [str(f) for f in folders])
        ordered = [img for img in ordered if found[img] is not None]
        captions = [(img, cap) for img, cap in captions if found[img] is not None]
        if not ordered:
            raise DataConfigError(f"{name}: no image of the split is in {[str(f) for f in folders]}; check `images`")
    ordered, captions = _limit(ordered, captions, max_images)
    paths = [found[img] or folders[0] / on_disk[img] for img in ordered]
    meta["image_dir"] = str(folders[0]) if len(folders) == 1 else [str(f) for f in folders]
    if len(folders) > 1:  # which copy each image came from (e.g. Flickr8k's 224 px copies first)
        meta["images_per_folder"] = {str(f): sum(found[img] == f / img for img in ordered) for f in folders}
    index = {img: i for i, img in enumerate(ordered)}
    return CaptionBenchmark(name, paths, list(ordered), [c for _, c in captions], [index[i] for i, _ in captions], meta)


def read_coco_captions(captions_json, image_dir, name="coco", max_images=None, check_images=True) -> CaptionBenchmark:
    """COCO `captions_*.json` (images + annotations), images in `image_dir` by `file_name`."""
    cfg = {"format": "coco_json", "captions": captions_json, "images": image_dir, "name": name, "max_images": max_images}
    return read_caption_config(cfg, check_images)


def read_karpathy(karpathy_json, image_root, split="test", name=None, max_images=None, check_images=True) -> CaptionBenchmark:
    """Karpathy split file (`dataset_coco.json`: 5k test; `dataset_flickr30k.json`: 1k test), `raw` captions."""
    cfg = {"format": "karpathy", "captions": karpathy_json, "images": image_root, "split": split, "name": name,
           "max_images": max_images}
    return read_caption_config(cfg, check_images)


def read_caption_csv(captions_csv, image_dir, name="flickr8k", max_images=None, check_images=True) -> CaptionBenchmark:
    """Flickr8k-style CSV (`image,caption` header; captions with commas are quoted)."""
    cfg = {"format": "caption_csv", "captions": captions_csv, "images": image_dir, "name": name, "max_images": max_images}
    return read_caption_config(cfg, check_images)


def read_flickr8k_token(token_file, image_dir, name="flickr8k", max_images=None, check_images=True) -> CaptionBenchmark:
    """Flickr8k's `Flickr8k.token.txt` (`<file>#<n><TAB><caption>`); malformed lines are skipped and counted."""
    cfg = {"format": "flickr8k_token", "captions": token_file, "images": image_dir, "name": name, "max_images": max_images}
    return read_caption_config(cfg, check_images)


CAPTION_FORMATS = ("caption_csv", "flickr8k_token", "coco_json", "karpathy", "caption_json")
_LAYOUTS = {"caption_csv": CSV_LAYOUT, "flickr8k_token": TOKEN_LAYOUT, "coco_json": COCO_LAYOUT, "karpathy": KARPATHY_LAYOUT,
            "caption_json": CAPTION_JSON_LAYOUT}


def read_caption_config(cfg: Mapping, check_images: bool = True) -> CaptionBenchmark:
    """A caption file from its config mapping.

    `format` (caption_csv / flickr8k_token / coco_json / karpathy / caption_json), `captions` (the file), `images`
    (a folder or a list of folders searched in order), `image_names` (a CSV: name in the caption file -> file on
    disk), `missing_images` (raise, default: every image must exist; drop: the absent ones are dropped with their
    captions and counted, for a partial local copy), optional `name`, `max_images` (the first N images after the
    split), and the split: Karpathy files carry their own (`split`, default test); the other formats take
    `split` + `split_files: {name: file of image names}` (or `split_file`) and `heldout_splits` (drop
    captions equal to a caption of those splits' images). `image_range: [start, stop]` keeps a slice of the
    name-sorted images, for a user's own file that has no official split. `captions_per_image: k` keeps each image's
    first k captions (null: all).
    """
    fmt, name, limit = cfg.get("format"), cfg.get("name"), cfg.get("max_images")
    if fmt not in CAPTION_FORMATS:
        raise DataConfigError(f"{name or 'captions'}: unknown caption format {fmt!r}; expected one of {CAPTION_FORMATS}")
    missing = [key for key in ("captions", "images") if not cfg.get(key)]
    if missing:
        raise DataConfigError(f"{name or fmt}: missing setting(s) {missing}")
    captions_file = Path(cfg["captions"]).expanduser()
    meta = {"format": fmt, "captions_file": str(captions_file)}
    if fmt == "karpathy":
        if cfg.get("split_files") or cfg.get("split_file"):
            raise DataConfigError(f"{name or fmt}: a Karpathy file carries its own split; set `split`, not split files")
        split = cfg.get("split") or "test"
        name = name or f"{captions_file.stem.removeprefix('dataset_')}-{split}"
        ordered, captions, extra = parse_karpathy(captions_file, split, name)
        meta["split"] = split
    else:
        name = name or ("coco" if fmt == "coco_json" else "captions")
        parse = {"caption_csv": parse_caption_csv, "coco_json": parse_coco, "flickr8k_token": parse_flickr8k_token,
                 "caption_json": parse_caption_json}[fmt]
        ordered, captions, extra = parse(captions_file, name)
    meta.update(extra)
    has_split = fmt != "karpathy" and any(cfg.get(k) for k in ("split", "split_files", "split_file"))
    if has_split:
        captions, split_meta = select_split(name, captions, cfg)
        meta.update(split_meta)
        if not captions:
            raise DataConfigError(f"{name}: no caption of {captions_file} describes an image of split {meta['split']!r} "
                                  f"({meta['split_file']}); check `captions` and `split_files`")
        kept = {img for img, _ in captions}
        ordered = [img for img in ordered if img in kept]
    allow_missing = cfg.get("missing_images", "raise") == "drop"
    renames = read_image_names(cfg["image_names"], name) if cfg.get("image_names") else None
    bench = _build(name, cfg["images"], ordered, captions, meta, _LAYOUTS[fmt], check_images, limit,
                   drop_missing=has_split or allow_missing, renames=renames, allow_missing=allow_missing)
    bench = select_image_range(bench, cfg.get("image_range"))
    per_image = cfg.get("captions_per_image")
    if per_image is not None:
        if int(per_image) < 1:
            raise DataConfigError(f"{name}: captions_per_image must be >= 1 (null: all), got {per_image}")
        bench = bench.first_captions(int(per_image))
    return bench.joined() if cfg.get("join_captions") else bench


def select_image_range(bench: CaptionBenchmark, image_range) -> CaptionBenchmark:
    """`bench.image_range(start, stop)` for a configured `[start, stop]` (None: all images), refusing an empty slice."""
    if image_range is None:
        return bench
    if len(image_range) != 2:
        raise DataConfigError(f"{bench.name}: image_range must be [start, stop], got {list(image_range)}")
    bench = bench.image_range(*image_range)
    if not bench.images:
        raise DataConfigError(f"{bench.name}: image_range {list(image_range)} selects no image")
    return bench
