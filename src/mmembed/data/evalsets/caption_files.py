"""The caption file formats: each parser returns the image names (file order), (image, caption) pairs and
what it skipped (for the protocol).

Formats, as released (a user's full copy is read unchanged):
- COCO `captions_*.json`; Karpathy `dataset_{coco,flickr30k}.json` (one split of it);
- BLIP/LAVIS caption json (`{image, caption: [...]}` items; Flickr30K's captions with Karpathy's split lists);
- Flickr8k-style `image,caption` CSV (Kaggle's `captions.txt`);
- Flickr8k's own `Flickr8k.token.txt` (`<file>#<n><TAB><caption>`; see `caption_splits.read_token_file`).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from mmembed.data.evalsets.caption_splits import TOKEN_LAYOUT, read_token_file
from mmembed.data.evalsets.layout import BenchmarkLayoutError, require
from mmembed.errors import DataConfigError

__all__ = ["CAPTION_JSON_LAYOUT", "COCO_LAYOUT", "CSV_LAYOUT", "KARPATHY_LAYOUT", "TOKEN_LAYOUT", "parse_caption_csv", "parse_caption_json", "parse_coco",
           "parse_flickr8k_token", "parse_karpathy", "read_image_names"]

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
CAPTION_JSON_LAYOUT = """
<captions>: BLIP/LAVIS layout: a JSON list (.json) or JSON lines (.jsonl, .jsonl.gz) of
    {"image": <file name>, "caption": <caption> or [<captions>]} (e.g. flickr30k_test.json); with `split` +
    `split_files` (Karpathy's image lists) one split of a file that holds them all
<images>/<file name> for every image named (`image_names`: a CSV renaming them to the files on disk)
"""
CSV_LAYOUT = """
<captions_csv>: a header line "image,caption", then one "<file name>,<caption>" row per caption
<image_dir>/<file name> for every image named
"""


def parse_coco(captions_json: Path, name: str):
    require(name, captions_json.parent, [captions_json.name], COCO_LAYOUT)
    data = json.loads(captions_json.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise BenchmarkLayoutError(name, captions_json, COCO_LAYOUT, ['"images" / "annotations" keys'])
    file_of = {img["id"]: img["file_name"] for img in data["images"]}
    ordered = [img["file_name"] for img in data["images"]]
    captions = [(file_of[a["image_id"]], a["caption"].strip()) for a in data["annotations"] if a["image_id"] in file_of]
    return ordered, captions, {}


def parse_karpathy(karpathy_json: Path, split: str, name: str):
    require(name, karpathy_json.parent, [karpathy_json.name], KARPATHY_LAYOUT)
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
        raise DataConfigError(f"{karpathy_json}: no images in split {split!r}; splits present: {splits}")
    return ordered, captions, {}


def parse_caption_json(captions_file: Path, name: str):
    require(name, captions_file.parent, [captions_file.name], CAPTION_JSON_LAYOUT)
    opener = gzip.open if captions_file.suffix == ".gz" else open
    with opener(captions_file, "rt", encoding="utf-8") as f:
        text = f.read()
    stem = captions_file.name.removesuffix(".gz")
    items = [json.loads(line) for line in text.splitlines() if line.strip()] if stem.endswith(".jsonl") else json.loads(text)
    if not isinstance(items, list) or not all(isinstance(i, dict) and "image" in i and "caption" in i for i in items):
        raise BenchmarkLayoutError(name, captions_file, CAPTION_JSON_LAYOUT, ['items with "image" and "caption"'])
    captions = [(i["image"], c.strip()) for i in items
                for c in ([i["caption"]] if isinstance(i["caption"], str) else i["caption"])]
    return list(dict.fromkeys(i["image"] for i in items)), captions, {}


def read_image_names(path, name: str) -> dict[str, str]:
    """`image_names`: a CSV whose first two columns are an image's name in the caption file and its file name on
    disk (a header line is kept out); e.g. the shared data's Flickr30K test images under their Flickr8k names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataConfigError(f"{name}: image_names file {path} not found")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) >= 2]
    return {r[0].strip(): r[1].strip() for r in rows[1:]}


def parse_caption_csv(captions_csv: Path, name: str):
    require(name, captions_csv.parent, [captions_csv.name], CSV_LAYOUT)
    with captions_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "caption"]:
        raise BenchmarkLayoutError(name, captions_csv, CSV_LAYOUT, ['header "image,caption"'])
    captions = [(row[0].strip(), ",".join(row[1:]).strip()) for row in rows[1:] if row]
    return list(dict.fromkeys(img for img, _ in captions)), captions, {}


def parse_flickr8k_token(token_file: Path, name: str):
    require(name, token_file.parent, [token_file.name], TOKEN_LAYOUT)
    ordered, captions, skipped = read_token_file(token_file)
    return ordered, captions, {"malformed_lines_skipped": len(skipped)}
