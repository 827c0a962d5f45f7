"""The caption file formats: each parser returns the image names (file order), (image, caption) pairs and
what it skipped (for the protocol).

Formats, as released (a user's full copy is read unchanged):
- COCO `captions_*.json`; Karpathy `dataset_{coco,flickr30k}.json` (one split of it);
- Flickr8k-style `image,caption` CSV (Kaggle's `captions.txt`);
- Flickr8k's own `Flickr8k.token.txt` (`<file>#<n><TAB><caption>`; see `caption_splits.read_token_file`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mmembed.data.evalsets.caption_splits import TOKEN_LAYOUT, read_token_file
from mmembed.data.evalsets.layout import BenchmarkLayoutError, require
from mmembed.errors import DataConfigError

__all__ = ["COCO_LAYOUT", "CSV_LAYOUT", "KARPATHY_LAYOUT", "TOKEN_LAYOUT", "parse_caption_csv", "parse_coco",
           "parse_flickr8k_token", "parse_karpathy"]

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
