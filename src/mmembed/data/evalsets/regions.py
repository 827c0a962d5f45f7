"""Region benchmarks from Flickr30k Entities: the boxed phrases of a caption benchmark's images.

For each image of a split (read like any caption benchmark: official split files, image folders searched
in order) the annotation file gives boxes per phrase chain in the ORIGINAL image's pixels
(`orig_width` x `orig_height`). The local copies are other sizes (224x224 stretched, smaller renditions),
so each box is normalised by the original size and scaled to the copy, then:
- clipped to the copy; a box wholly outside it is skipped (counted as `outside`),
- skipped when it has no area (`degenerate`: x2 <= x1 or y2 <= y1, before or after clipping),
- skipped when its shorter side is under `min_side` pixels of the copy (`tiny`: too little to pool),
- skipped when it is a scene chain (`scene`: "a park", "the street": the whole picture, not a region).
Chain "0" (phrases without a box) never has boxes. An image keeps its regions when at least two chains
remain (phrase -> region needs a choice); others are dropped (`images_with_fewer_than_2_chains`).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmembed.data.evalsets.caption_splits import (
    captions_of_splits,
    normalise_caption,
    read_split_file,
    read_token_file,
)
from mmembed.data.evalsets.captions import read_caption_config
from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.errors import DataConfigError


@dataclass(frozen=True)
class Region:
    image: int  # index into RegionBenchmark.images
    chain: str  # the Flickr30k Entities phrase chain the box belongs to
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the local copy's pixels, clipped to it


@dataclass
class RegionBenchmark:
    """Images, their kept regions, and every phrase each (image, chain) is mentioned by (first = the query)."""

    name: str
    images: list[Path]
    image_ids: list[str]
    regions: list[Region]
    phrases: dict[tuple[int, str], list[str]]
    counts: dict = field(default_factory=dict)

    def queries(self) -> list[tuple[int, str, str]]:
        """(image, chain, phrase): one phrase query per chain that has a kept box, in image order."""
        chains = dict.fromkeys((r.image, r.chain) for r in self.regions)
        return [(image, chain, self.phrases[(image, chain)][0]) for image, chain in chains]


def read_entities(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(f"Flickr30k Entities annotations not found: {path} (flickr8k_entities.jsonl.gz)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {row["flickr8k_file"]: row for row in map(json.loads, f)}


def copy_box(box, orig_size, copy_size) -> tuple[float, float, float, float]:
    """An xyxy box in the original image's pixels -> the same box in a copy of `copy_size` (not clipped)."""
    (ow, oh), (w, h) = orig_size, copy_size
    x1, y1, x2, y2 = box
    return (x1 / ow * w, y1 / oh * h, x2 / ow * w, y2 / oh * h)


def keep_box(box, size, min_side: float) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """(the box clipped to an image of `size`, None) or (None, why it is skipped)."""
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        return None, "degenerate"
    w, h = size
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        return None, "outside"
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h)))
    if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < min_side:
        return None, "tiny"
    return clipped, None


def image_regions(entry: Mapping, image: int, size, min_side: float, counts: Counter):
    """(kept regions, {chain: phrases}) of one image's annotation entry; skipped boxes are counted."""
    phrases: dict[str, list[str]] = {}
    scene = set(entry.get("scene_chains", []))
    for caption in entry["captions"]:
        for p in caption["phrases"]:
            if "scene" in p["types"]:
                scene.add(p["chain"])
            phrases.setdefault(p["chain"], [])
            if p["phrase"] not in phrases[p["chain"]]:
                phrases[p["chain"]].append(p["phrase"])
    orig = (entry["orig_width"], entry["orig_height"])
    kept = []
    for chain, boxes in sorted(entry["boxes_xyxy_orig"].items(), key=lambda kv: int(kv[0])):
        for box in boxes:
            counts["boxes"] += 1
            if chain == "0" or chain not in phrases:
                counts["no_phrase"] += 1
                continue
            if chain in scene:
                counts["scene"] += 1
                continue
            clipped, why = keep_box(copy_box(box, orig, size), size, min_side)
            if clipped is None:
                counts[why] += 1
            else:
                kept.append(Region(image, chain, clipped))
    return kept, phrases


def read_region_config(cfg: Mapping, min_chains: int = 2, check_images: bool = True) -> RegionBenchmark:
    """A region benchmark: the caption-benchmark settings of its images (`format`, `captions`, `images`,
    `split`, `split_files`, `max_images`) plus `entities` (flickr8k_entities.jsonl.gz) and `min_side`.
    Images with fewer than `min_chains` chains left are dropped (2 for phrase -> region evaluation).
    `check_images=False` (training): a split's images no folder holds are dropped, as caption sources do."""
    base = read_caption_config(cfg, check_images=check_images)
    entities = read_entities(cfg["entities"])
    min_side = float(cfg.get("min_side") or 8)
    counts: Counter = Counter()
    images, image_ids, regions, phrases = [], [], [], {}
    for path, image_id in zip(base.images, base.image_ids):
        entry = entities.get(image_id)
        if entry is None:
            counts["images_without_annotations"] += 1
            continue
        with Image.open(path) as image:
            size = image.size
        kept, chain_phrases = image_regions(entry, len(images), size, min_side, counts)
        if len({r.chain for r in kept}) < min_chains:
            counts[f"images_with_fewer_than_{min_chains}_chains"] += 1
            continue
        images.append(path)
        image_ids.append(image_id)
        regions += kept
        phrases.update({(len(images) - 1, chain): chain_phrases[chain] for chain in {r.chain for r in kept}})
    counts["regions_kept"], counts["images_kept"] = len(regions), len(images)
    return RegionBenchmark(cfg.get("name", "regions"), images, image_ids, regions, phrases, dict(counts))


def region_phrase_pairs(cfg: Mapping) -> tuple[list[tuple[Path, str, tuple]], dict]:
    """Training pairs (image path, phrase, box in the copy's pixels): every distinct phrase of each chain
    that has exactly ONE kept box ("two dogs" over two boxes names neither box alone), with the counts."""
    bench = read_region_config(cfg, min_chains=1, check_images=False)
    boxes: dict[tuple[int, str], list[Region]] = {}
    for r in bench.regions:
        boxes.setdefault((r.image, r.chain), []).append(r)
    held = _heldout_captions(cfg)
    pairs, several, dropped = [], 0, 0
    for (image, chain), found in boxes.items():
        if len(found) > 1:
            several += 1
            continue
        for phrase in bench.phrases[(image, chain)]:
            if normalise_caption(phrase) in held:
                dropped += 1
            else:
                pairs.append((bench.images[image], phrase, found[0].box))
    return pairs, {**bench.counts, "chains_with_several_boxes": several, "phrases_dropped_as_heldout": dropped,
                   "pairs": len(pairs)}


def _heldout_captions(cfg: Mapping) -> set[str]:
    """Captions of the `heldout_splits` images (a short test caption such as "a dog" may also be a training
    phrase): no evaluation sentence is trained on, as for caption sources."""
    heldout = list(cfg.get("heldout_splits") or [])
    if not heldout:
        return set()
    files = cfg.get("split_files") or {}
    unknown = [s for s in heldout if s not in files]
    if unknown:
        raise DataConfigError(f"{cfg.get('name')}: heldout_splits {unknown} must name splits of {sorted(files)}")
    _, captions, _ = read_token_file(Path(cfg["captions"]))
    return captions_of_splits(captions, [set(read_split_file(files[s], cfg.get("name"))) for s in heldout])
