"""The mini-MMEB's grounding set: Flickr30k Entities phrase boxes on Flickr8k images, cropped to files.

A query is (whole image, a phrase); its candidates are crops of that image's regions: the phrase's own box
first, then the boxes of the image's other phrases. Boxes are recorded in the original image's pixels
(`orig_width` x `orig_height`); the local copies are other sizes (224x224 stretched, or smaller
renditions), so each box is normalised by the original size and scaled to the copy before cropping.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from PIL import Image

from mmembed.prep.mini_mmeb.tasks import eval_row, flickr8k_split, train_row

GROUND_INST = "<|image_1|> Select the portion of the image that follows the language expression:"
CROP_TGT_INST = "<|image_1|> Represent the given cropped image of the object."
ENTITIES = "flickr30k_entities/flickr8k_entities.jsonl.gz"
MAX_CANDIDATES = 8  # gold + up to 7 other regions of the same image
MIN_SIDE = 8  # px in the copy: smaller crops carry nothing to embed
MAX_AREA = 0.9  # a box covering most of the image is the scene, not a region
MAX_IOU = 0.5  # another region overlapping the gold this much would be a second right answer


def scale_box(box, orig_size, copy_size) -> tuple[float, float, float, float]:
    """An xyxy box in original pixels -> the same box in a copy of `copy_size` (normalised by the original size)."""
    (ow, oh), (w, h) = orig_size, copy_size
    x1, y1, x2, y2 = box
    return (x1 / ow * w, y1 / oh * h, x2 / ow * w, y2 / oh * h)


def pixel_box(box, size) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(size[0], math.ceil(x2)), min(size[1], math.ceil(y2)))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def read_entities(data_root: Path) -> dict[str, dict]:
    with gzip.open(data_root / ENTITIES, "rt", encoding="utf-8") as f:
        return {row["flickr8k_file"]: row for row in map(json.loads, f)}


def regions(entry: dict, copy_size) -> tuple[dict[str, str], list[tuple[str, int, tuple]]]:
    """(chain -> its first phrase, [(chain, box number, box in the copy's pixels)]) of an image's non-scene chains."""
    phrase, scene = {}, set(entry["scene_chains"])
    for caption in entry["captions"]:
        for p in caption["phrases"]:
            if "scene" in p["types"]:
                scene.add(p["chain"])
            phrase.setdefault(p["chain"], p["phrase"])
    orig = (entry["orig_width"], entry["orig_height"])
    area = copy_size[0] * copy_size[1]
    out = []
    for chain, boxes in sorted(entry["boxes_xyxy_orig"].items(), key=lambda kv: int(kv[0])):
        if chain in scene or chain == "0" or chain not in phrase:
            continue
        for k, box in enumerate(boxes):
            b = scale_box(box, orig, copy_size)
            w, h = b[2] - b[0], b[3] - b[1]
            if min(w, h) >= MIN_SIDE and w * h <= MAX_AREA * area:
                out.append((chain, k, b))
    return phrase, out


def query_candidates(phrase, found, rng, max_candidates=MAX_CANDIDATES):
    """A seeded gold region (one whose chain has exactly one box) and the other regions it is told apart from."""
    boxes_per_chain = {}
    for chain, _, _ in found:
        boxes_per_chain[chain] = boxes_per_chain.get(chain, 0) + 1
    golds = [r for r in found if boxes_per_chain[r[0]] == 1]
    rng.shuffle(golds)
    for gold in golds:
        others = []
        for r in found:
            if r[0] != gold[0] and phrase[r[0]].lower() != phrase[gold[0]].lower() and iou(r[2], gold[2]) <= MAX_IOU \
                    and all(iou(r[2], o[2]) <= 0.9 for o in others):
                others.append(r)
        if others:
            rng.shuffle(others)
            return gold, others[: max_candidates - 1]
    return None


def grounding(ctx) -> dict[str, list[dict]]:
    """Eval: one phrase query per official test image. Train: one per local train image, the gold crop as
    the positive and another region of the same image as its hard negative."""
    entities = read_entities(ctx.data_root)
    out = {}
    for split, key in (("test", "eval/Flickr30k-Entities-8k"), ("train", "train/Flickr30k-Entities-8k")):
        names, paths, _ = flickr8k_split(ctx, split)
        rng, rows = ctx.rng(f"grounding-{split}"), []
        for name, path in zip(names, paths):
            with Image.open(path) as image:
                image = image.convert("RGB")
                phrase, found = regions(entities[name], image.size)
                picked = query_candidates(phrase, found, rng, MAX_CANDIDATES if split == "test" else 2)
                if picked is None:
                    continue
                gold, others = picked
                stem = Path(name).stem
                crops = [ctx.write_crop(image, pixel_box(b, image.size), f"crops/{split}/{stem}_c{c}_b{k}.jpg",
                                        ctx.rel(path), b) for c, k, b in [gold, *others]]
            if split == "test":
                rows.append(eval_row(GROUND_INST, phrase[gold[0]], ctx.rel(path), CROP_TGT_INST,
                                     [""] * len(crops), crops))
            else:
                rows.append(train_row(f"{GROUND_INST} {phrase[gold[0]]}", ctx.rel(path), CROP_TGT_INST, crops[0],
                                      CROP_TGT_INST, crops[1]))
        out[key] = rows
    return out
