"""Composed image retrieval benchmarks in their release formats: CIRR and FashionIQ.

A query is (reference image, modification text) and its answer is a target image from a gallery.
Images are resolved by the split file's relative path under `image_root`, or by name
(`<name>.png|jpg|...`) in a flat `image_dir` (e.g. the local `images_dev_subset/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.evalsets.layout import BenchmarkLayoutError, require
from mmembed.data.images import IMAGE_EXTENSIONS

CIRR_LAYOUT = """
<root>/captions/cap.rc2.<split>.json        [{pairid, reference, target_hard, caption, img_set: {members}}]
<root>/image_splits/split.rc2.<split>.json  {name: "./<split dir>/<name>.png"}
<image_root>/<split dir>/<name>.png         (or every image flat in <image_dir>/<name>.png)
"""
FASHIONIQ_LAYOUT = """
<root>/captions/cap.<category>.<split>.json        [{candidate, target, captions: [two texts]}]
<root>/image_splits/split.<category>.<split>.json  [asin, ...]
<image_dir>/<asin>.png|jpg                          (default image_dir: <root>/images)
"""
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
# E5-V calls the toptee category "shirt" inside its FashionIQ prompts.
FIQ_PROMPT_CATEGORY = {"dress": "dress", "shirt": "shirt", "toptee": "shirt"}


@dataclass
class CIRQuery:
    qid: int
    reference: str
    caption: str
    target: str | None
    members: list[str] = field(default_factory=list)  # CIRR img_set (Recall_subset), reference included


@dataclass
class CIRBenchmark:
    name: str
    queries: list[CIRQuery]
    gallery: dict[str, Path]  # image name -> file, in split-file order
    meta: dict = field(default_factory=dict)


def find_image(name: str, folder: Path) -> Path | None:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def _resolve(names_to_rel: dict[str, str | None], image_root: Path | None, image_dir: Path | None) -> dict:
    found = {}
    for name, rel in names_to_rel.items():
        path = None
        if image_dir is not None:
            path = find_image(name, image_dir)
        if path is None and image_root is not None and rel:
            candidate = image_root / rel
            path = candidate if candidate.is_file() else None
        if path is not None:
            found[name] = path
    return found


def _gallery(name, names_to_rel, image_root, image_dir, gallery, layout, where):
    if gallery not in ("split", "available"):
        raise ValueError(f"gallery must be 'split' (every split image) or 'available', not {gallery!r}")
    found = _resolve(names_to_rel, image_root, image_dir)
    missing = [n for n in names_to_rel if n not in found]
    if (missing and gallery == "split") or not found:
        shown = [f"{len(missing)} of {len(names_to_rel)} images, e.g. {missing[0]}"] if missing else []
        raise BenchmarkLayoutError(name, where, layout, shown)
    return {n: found[n] for n in names_to_rel if n in found}, len(missing)


def _keep_answerable(queries: list[CIRQuery], gallery: dict) -> list[CIRQuery]:
    return [q for q in queries if q.reference in gallery and (q.target is None or q.target in gallery)]


def read_cirr(
    root: str | Path,
    split: str = "val",
    image_root: str | Path | None = None,
    image_dir: str | Path | None = None,
    captions_file: str | Path | None = None,
    gallery: str = "split",
) -> CIRBenchmark:
    """CIRR `cap.rc2.<split>.json` + `split.rc2.<split>.json`.

    gallery="split": every image of the split file must exist (the official protocol's candidates).
    gallery="available": candidates are the split images found; queries whose reference or target is
    absent are dropped (counts recorded in `meta`). `captions_file` replaces the captions file (a subset).
    """
    root = Path(root)
    cap_rel, split_rel = f"captions/cap.rc2.{split}.json", f"image_splits/split.rc2.{split}.json"
    require("CIRR", root, [split_rel] + ([] if captions_file else [cap_rel]), CIRR_LAYOUT)
    captions_path = Path(captions_file) if captions_file else root / cap_rel
    if not captions_path.is_file():
        raise BenchmarkLayoutError("CIRR", captions_path, CIRR_LAYOUT, [captions_path])
    names = json.loads((root / split_rel).read_text(encoding="utf-8"))
    queries = [
        CIRQuery(
            int(a["pairid"]), a["reference"], a["caption"].strip(), a.get("target_hard"), list(a["img_set"]["members"])
        )
        for a in json.loads(captions_path.read_text(encoding="utf-8"))
    ]
    image_root = Path(image_root) if image_root else root
    image_dir = Path(image_dir) if image_dir else None
    images, n_missing = _gallery(
        f"CIRR-{split}", names, image_root, image_dir, gallery, CIRR_LAYOUT, image_dir or image_root
    )
    kept = _keep_answerable(queries, images)
    meta = {
        "split": split,
        "captions_file": str(captions_path),
        "image_dir": str(image_dir or image_root),
        "gallery": gallery,
        "split_images": len(names),
        "missing_images": n_missing,
        "queries_in_file": len(queries),
        "queries_dropped": len(queries) - len(kept),
    }
    return CIRBenchmark(f"CIRR-{split}", kept, images, meta)


def join_fiq_captions(captions: list[str]) -> str:
    """E5-V's FashionIQ text: each relative caption stripped of '.?, ' at both ends, joined by ', '."""
    return ", ".join(c.strip(".?, ") for c in captions)


def read_fashioniq(
    root: str | Path,
    category: str,
    split: str = "val",
    image_dir: str | Path | None = None,
    gallery: str = "split",
) -> CIRBenchmark:
    """FashionIQ `cap.<category>.<split>.json` + `split.<category>.<split>.json` (candidates = the split's images)."""
    if category not in FASHIONIQ_CATEGORIES:
        raise ValueError(f"FashionIQ category must be one of {FASHIONIQ_CATEGORIES}, not {category!r}")
    root = Path(root)
    cap_rel, split_rel = f"captions/cap.{category}.{split}.json", f"image_splits/split.{category}.{split}.json"
    require("FashionIQ", root, [cap_rel, split_rel], FASHIONIQ_LAYOUT)
    image_dir = Path(image_dir) if image_dir else root / "images"
    if not image_dir.is_dir():
        raise BenchmarkLayoutError("FashionIQ", image_dir, FASHIONIQ_LAYOUT, [image_dir])
    names = json.loads((root / split_rel).read_text(encoding="utf-8"))
    queries = [
        CIRQuery(i, a["candidate"], join_fiq_captions(a["captions"]), a.get("target"))
        for i, a in enumerate(json.loads((root / cap_rel).read_text(encoding="utf-8")))
    ]
    if any(q.target is None for q in queries):
        raise ValueError(f"{root / cap_rel} has no targets (FashionIQ's test split is unlabelled); use split=val")
    name = f"FashionIQ-{category}-{split}"
    images, n_missing = _gallery(name, dict.fromkeys(names), None, image_dir, gallery, FASHIONIQ_LAYOUT, image_dir)
    kept = _keep_answerable(queries, images)
    meta = {
        "category": category,
        "prompt_category": FIQ_PROMPT_CATEGORY[category],
        "split": split,
        "captions_file": str(root / cap_rel),
        "image_dir": str(image_dir),
        "gallery": gallery,
        "split_images": len(names),
        "missing_images": n_missing,
        "queries_in_file": len(queries),
        "queries_dropped": len(queries) - len(kept),
    }
    return CIRBenchmark(name, kept, images, meta)
