"""Zero-shot classification benchmark: a class list (`classes.tsv`) and labelled images."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.evalsets.layout import BenchmarkLayoutError, require
from mmembed.data.images import is_image_file

ZEROSHOT_LAYOUT = """
<root>/classes.tsv   tab separated with a header: class_index, class_name [, wnid] [, file_name]
<root>/images/<file_name>          one labelled image per classes.tsv row with a file_name, or
<root>/images/<wnid or class_index>/*.JPEG   an image folder per class (ImageNet val layout)
"""


@dataclass
class ZeroShotBenchmark:
    name: str
    class_names: list[str]  # index = label
    images: list[Path]
    labels: list[int]
    meta: dict = field(default_factory=dict)


def read_zeroshot(root: str | Path, name: str = "imagenet", image_dir: str | Path | None = None) -> ZeroShotBenchmark:
    root = Path(root)
    require(name, root, ["classes.tsv"], ZEROSHOT_LAYOUT)
    image_dir = Path(image_dir) if image_dir else root / "images"
    if not image_dir.is_dir():
        raise BenchmarkLayoutError(name, image_dir, ZEROSHOT_LAYOUT, [image_dir])
    with (root / "classes.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not {"class_index", "class_name"} <= set(rows[0]):
        raise BenchmarkLayoutError(name, root / "classes.tsv", ZEROSHOT_LAYOUT, ["columns class_index, class_name"])
    rows.sort(key=lambda r: int(r["class_index"]))
    indices = [int(r["class_index"]) for r in rows]
    if indices != list(range(len(rows))):
        raise ValueError(f"{root / 'classes.tsv'}: class_index must run 0..{len(rows) - 1} without gaps")
    # Class names as words: "great_white_shark" -> "great white shark".
    class_names = [r["class_name"].replace("_", " ").strip() for r in rows]
    images, labels = [], []
    if rows[0].get("file_name"):
        for r in rows:
            images.append(image_dir / r["file_name"])
            labels.append(int(r["class_index"]))
    else:
        for r in rows:
            for key in (r.get("wnid"), r["class_index"]):
                folder = image_dir / key if key else None
                if folder is not None and folder.is_dir():
                    files = sorted(p for p in folder.iterdir() if is_image_file(p))
                    images.extend(files)
                    labels.extend([int(r["class_index"])] * len(files))
                    break
    missing = [p for p in images if not p.is_file()]
    if missing or not images:
        shown = [f"{len(missing)} of {len(images)} images, e.g. {missing[0]}"] if missing else ["labelled images"]
        raise BenchmarkLayoutError(name, image_dir, ZEROSHOT_LAYOUT, shown)
    meta = {"classes_file": str(root / "classes.tsv"), "image_dir": str(image_dir)}
    return ZeroShotBenchmark(name, class_names, images, labels, meta)
