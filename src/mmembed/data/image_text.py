"""Image-caption pairs for training: readers for several layouts (the source: `mmembed.data.sources.image_text`).

Sources (each a mapping in `data.sources`, several are concatenated):
- `format: coco_json`      COCO `captions_*.json` + image folder (`captions`, `images`);
- `format: caption_csv`    Flickr-style `image,caption` CSV + image folder (`captions`, `images`);
- `format: flickr8k_token` Flickr8k's own `Flickr8k.token.txt` (`<file>#<n><TAB><caption>`) + image folder;
- `format: karpathy`       Karpathy `dataset_*.json` (`captions`, `images`, `split`);
- `format: pairs`          a generic `.jsonl` / `.csv` / `.tsv` with `image` and `text` columns (`file`,
                           optional `images` root; relative image paths are resolved against it, default:
                           the file's folder);
- `format: imagefolder`    the `datasets` ImageFolder layout: `<root>/metadata.jsonl` (or `.csv`) with a
                           `file_name` column and a text column (`text_column`, default `text`); the same
                           folder loads with `datasets.load_dataset("imagefolder", data_dir=root)`;
- `format: flickr30k_entities` region-phrase pairs: a Flickr8k-style caption source's images (`captions`,
                           `images`, `split`, `split_files`) and `entities` (flickr8k_entities.jsonl.gz);
                           each pair carries its box (MM-GEM's region level, mmembed.data.evalsets.regions).
Splits: `split: train` + `split_files: {train: ..., dev: ..., test: ...}` (files of image names, e.g.
Flickr8k's `Flickr_8k.trainImages.txt`) keeps that split's images, matched by file name, whatever folder
they are in; `heldout_splits: [dev, test]` also drops captions identical to one of those splits' captions, so
no evaluation sentence is trained on. Caption formats take several image folders (`images: [dir1, dir2]`,
the first that holds an image wins); a split's images found in none are dropped and counted (a partial
copy). `image_range: [start, stop]` (a slice of the name-sorted images) is for a user's own data without an
official split; `max_images` keeps the first N images.

Images are *not* opened here: `mmembed.data.sources.image_text.ImageTextRows` opens them with `load_image` under `data.on_error`, so a
missing or corrupt image is skipped and counted (or raises with its path) when its batch is built.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmembed.data.evalsets.caption_splits import select_split
from mmembed.data.evalsets.captions import CAPTION_FORMATS, CaptionBenchmark, read_caption_config, select_image_range
from mmembed.errors import DataConfigError

log = logging.getLogger(__name__)

PAIR_FORMATS = (*CAPTION_FORMATS, "pairs", "imagefolder", "flickr30k_entities")


@dataclass(frozen=True)
class ImageTextPair:
    image: str  # path of the image file
    text: str
    source: str  # the source's name, for counts and error messages
    box: tuple[float, float, float, float] | None = None  # a region of the image (its pixels), or the whole image


def read_image_text_sources(sources: Sequence[Mapping]) -> list[ImageTextPair]:
    """All pairs of every configured source, in source order then file order."""
    if not sources:
        raise DataConfigError("data.sources is empty: name at least one image-caption source")
    pairs: list[ImageTextPair] = []
    for i, source in enumerate(sources):
        read = read_image_text_source(source)
        log.info("image-text source %s: %d pairs", source.get("name") or f"#{i}", len(read))
        pairs.extend(read)
    return pairs


def read_image_text_source(source: Mapping) -> list[ImageTextPair]:
    fmt = source.get("format")
    name = source.get("name") or str(fmt)
    if fmt == "flickr30k_entities":
        from mmembed.data.evalsets.regions import region_phrase_pairs

        found, counts = region_phrase_pairs(dict(source, name=name, format="flickr8k_token"))
        log.info("region source %s: %s", name, counts)
        return [ImageTextPair(str(path), phrase, name, box) for path, phrase, box in found]
    if fmt in CAPTION_FORMATS:
        bench = read_caption_config(dict(source, name=name), check_images=False)
        return [ImageTextPair(str(bench.images[i]), text, name) for text, i in zip(bench.captions, bench.caption_image)]
    if fmt == "pairs":
        rows, root = _read_pairs_file(_required(source, "file", name), source.get("images"))
        image_col, text_col = source.get("image_column", "image"), source.get("text_column", "text")
    elif fmt == "imagefolder":
        root = Path(_required(source, "root", name))
        rows = _read_imagefolder_metadata(root)
        image_col, text_col = "file_name", source.get("text_column", "text")
    else:
        raise DataConfigError(f"data source {name!r}: format={fmt!r}; expected one of {PAIR_FORMATS}")
    if rows and (image_col not in rows[0] or text_col not in rows[0]):
        raise DataConfigError(
            f"data source {name!r}: needs columns {image_col!r} and {text_col!r}, found {sorted(rows[0])}"
        )
    kept = [(str(root / str(r[image_col])), str(r[text_col]).strip()) for r in rows
            if r.get(image_col) and isinstance(r.get(text_col), str) and r[text_col].strip()]
    if any(source.get(key) for key in ("split", "split_files", "split_file")):
        kept = select_split(name, kept, source)[0]  # matched by file name, as the caption formats
    images = list(dict.fromkeys(path for path, _ in kept))[: source.get("max_images")]  # file order, as the caption readers
    index = {path: i for i, path in enumerate(images)}
    kept = [(path, text) for path, text in kept if path in index]
    # The same name-sorted slice as the caption readers (CaptionBenchmark.image_range).
    bench = CaptionBenchmark(name, [Path(p) for p in images], [Path(p).name for p in images],
                             [text for _, text in kept], [index[path] for path, _ in kept])
    try:
        bench = select_image_range(bench, source.get("image_range"))
    except ValueError as err:
        raise DataConfigError(f"data source {err}") from err
    return [ImageTextPair(str(bench.images[i]), text, name) for text, i in zip(bench.captions, bench.caption_image)]


def source_paths(source: Mapping) -> list[tuple[str, Path]]:
    """Every local path a source names (caption file, each image folder, split files), as (setting, path):
    what a fail-fast check before the model loads should find. Accepts OmegaConf lists and mappings."""
    paths = []
    for key in ("captions", "images", "file", "root", "split_file", "entities"):
        value = source.get(key)
        values = [value] if value is None or isinstance(value, (str, os.PathLike)) else list(value)
        paths += [(key, Path(str(v)).expanduser()) for v in values if v]
    split_files = source.get("split_files") or {}
    return paths + [(f"split_files.{k}", Path(str(v)).expanduser()) for k, v in split_files.items() if v]


def _required(source: Mapping, key: str, name: str):
    if not source.get(key):
        raise DataConfigError(f"data source {name!r} ({source.get('format')}) needs `{key}`")
    return source[key]


def _read_pairs_file(file: str, images: str | None) -> tuple[list[dict], Path]:
    path = Path(file).expanduser()
    if not path.is_file():
        raise DataConfigError(f"image-text pairs file {path} not found")
    root = Path(images).expanduser() if images else path.parent
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    else:
        raise DataConfigError(f"{path}: expected a .jsonl, .csv or .tsv file of image,text rows")
    return rows, root


def _read_imagefolder_metadata(root: Path) -> list[dict]:
    for name in ("metadata.jsonl", "metadata.csv"):
        if (root / name).is_file():
            return _read_pairs_file(str(root / name), str(root))[0]
    raise DataConfigError(f"{root} has no metadata.jsonl or metadata.csv (the datasets ImageFolder layout)")


def pairs_as_rows(pairs: Sequence[ImageTextPair]) -> list[dict]:
    return [{"image": p.image, "text": p.text, "box": p.box} for p in pairs]

