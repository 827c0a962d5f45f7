"""Build the local mini-MMEB: MMEB-format eval and train files from the shared data only, deterministically.

    python experiments/build_mini_mmeb.py [--out ~/.cache/mmembed/mini_mmeb-v1] [--limit N]

Layout written under `out` (the shared data stays read-only; nothing goes into the repository):
    eval/<Dataset>.jsonl + <Dataset>.meta.json   MMEB eval rows (gold first) + meta-task, IND/OOD, provenance
    train/<Dataset>.jsonl                         MMEB train rows, from training images only
    images/                                       the image root: links to the shared image folders, copies
                                                  of easy-VQA's images, and the grounding crops (crops.tsv)
    README.md, counts.json                        how each dataset was built; the counts
The same inputs give byte-identical files: every random choice comes from `random.Random("<seed>:<dataset>")`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

from mmembed.errors import DataConfigError
from mmembed.prep.mini_mmeb.grounding import grounding
from mmembed.prep.mini_mmeb.heldout import configured_heldout, drop_heldout_train_rows
from mmembed.prep.mini_mmeb.readme import DATASETS, readme
from mmembed.prep.mini_mmeb.tasks import (
    cirr_local,
    easy_vqa,
    flickr8k_concepts_train,
    flickr8k_retrieval,
    imagenet_classification,
)

VERSION = "mini_mmeb-v1"
DEFAULT_OUT = Path("~/.cache/mmembed") / VERSION
BUILD_COMMAND = "python experiments/build_mini_mmeb.py"
# images/<link> -> <data root>/<folder>: the shared folders are linked, never copied
LINKS = {"flickr8k_224": "flickr8k_224/images", "flickr8k": "flickr8k/images",
         "imagenet": "imagenet_sample/images", "cirr": "cirr/images_dev_subset"}
BUILDERS = (flickr8k_retrieval, flickr8k_concepts_train, imagenet_classification, cirr_local, easy_vqa, grounding)


class BuildContext:
    """What the dataset builders share: paths relative to the image root, seeded generators, written crops."""

    def __init__(self, data_root: Path, images: Path, limit: int | None, seed: int):
        self.data_root, self.images, self.limit, self.seed = data_root, images, limit, seed
        self.crops: list[tuple[str, str, tuple]] = []

    def rel(self, path: str | Path) -> str:
        path = Path(path)
        for link, folder in LINKS.items():
            if path.parent == self.data_root / folder:
                return f"{link}/{path.name}"
        raise ValueError(f"{path} is in none of the linked folders {sorted(LINKS.values())}")

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")  # str seeds hash with SHA-512: the same in every process

    def copy_image(self, source: str | Path, rel: str) -> str:
        target = self.images / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return rel

    def write_crop(self, image, box, rel: str, source: str, box_float) -> str:
        target = self.images / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        image.crop(box).save(target, format="JPEG", quality=95)
        self.crops.append((rel, source, tuple(round(v, 1) for v in box_float)))
        return rel

    @staticmethod
    def easy_vqa():
        try:
            import easy_vqa
        except ImportError as err:
            raise DataConfigError("the mini-MMEB's VQA set needs the easy-vqa package: pip install easy-vqa") from err
        return easy_vqa


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _images_of(rows: list[dict], keys) -> set[str]:
    return {p for r in rows for k in keys for p in ([r[k]] if isinstance(r[k], str) else r[k]) if p}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_disjoint(out: Path, files: dict[str, list[dict]], crops) -> dict:
    """Eval images (crops traced to their source image) and train images share no file and no content."""
    source = {rel: src for rel, src, _ in crops}
    seen = {}
    for split, keys in (("eval", ("qry_img_path", "tgt_img_path")), ("train", ("qry_image_path", "pos_image_path",
                                                                             "neg_image_path"))):
        rels = set().union(*(_images_of(rows, keys) for key, rows in files.items() if key.startswith(split)))
        seen[split] = {source.get(rel, rel) for rel in rels}
    shared_files = seen["eval"] & seen["train"]
    hashes = {split: {_sha256(out / "images" / rel) for rel in rels} for split, rels in seen.items()}
    shared_content = hashes["eval"] & hashes["train"]
    if shared_files or shared_content:
        raise RuntimeError(f"mini-MMEB build: {len(shared_files)} image files and {len(shared_content)} image "
                           f"contents are in both eval and train, e.g. {sorted(shared_files)[:3]}")
    return {"eval_source_images": len(seen["eval"]), "train_source_images": len(seen["train"]),
            "shared_files": 0, "shared_contents": 0}


def build_mini_mmeb(data_root: str | Path, out: str | Path = DEFAULT_OUT, limit: int | None = None, seed: int = 0,
                    force: bool = False, heldout: frozenset[str] | None = None) -> dict:
    """Build into `out` (refusing an existing folder unless `force`); returns the counts (also counts.json).

    `heldout`: the evaluation sentences no training row may hold (folded as data.heldout folds them);
    None reads conf/heldout/local.yaml's sets under `data_root`. Rows holding one are left out of the
    train files, and `counts["heldout_dropped"]` says how many per dataset.
    """
    data_root, out = Path(data_root).expanduser().resolve(), Path(out).expanduser()
    if out.exists() and not force:
        raise DataConfigError(f"{out} exists; pass --force to rebuild it, or choose another --out")
    if out.exists() and not (out / "counts.json").is_file():
        raise DataConfigError(f"{out} exists and is not a mini-MMEB build (no counts.json); not overwriting it")
    start = time.perf_counter()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    for link, folder in LINKS.items():
        if not (data_root / folder).is_dir():
            raise DataConfigError(f"{data_root / folder} is missing: the mini-MMEB is built from the shared data "
                                  "(set MMEMBED_DATA or --data-root)")
        (partial / "images" / link).symlink_to(data_root / folder, target_is_directory=True)
    ctx = BuildContext(data_root, partial / "images", limit, seed)
    files: dict[str, list[dict]] = {}
    for builder in BUILDERS:
        files.update(builder(ctx))
    dropped = drop_heldout_train_rows(files, configured_heldout(data_root) if heldout is None else heldout)
    for key, rows in sorted(files.items()):
        _jsonl(partial / f"{key}.jsonl", rows)
        if key.startswith("eval/"):
            meta = {**DATASETS[key.removeprefix("eval/")], "built_by": VERSION, "seed": seed, "limit": limit}
            (partial / f"{key}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    ctx.crops.sort()
    (partial / "images" / "crops.tsv").write_text(
        "crop\tsource_image\tbox_xyxy_in_source\n" + "".join(f"{c}\t{s}\t{list(b)}\n" for c, s, b in ctx.crops),
        encoding="utf-8")
    counts = {
        "version": VERSION, "seed": seed, "limit": limit, "data_root": str(data_root),
        "eval": {k.removeprefix("eval/"): _eval_counts(r) for k, r in sorted(files.items()) if k.startswith("eval/")},
        "train": {k.removeprefix("train/"): len(r) for k, r in sorted(files.items()) if k.startswith("train/")},
        "heldout_dropped": dropped,  # train rows left out for holding an evaluation sentence (conf/heldout)
        "crops_written": len(ctx.crops),
        "disjoint": check_disjoint(partial, files, ctx.crops),
    }
    (partial / "counts.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    (partial / "README.md").write_text(readme(counts, BUILD_COMMAND), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return {**counts, "build_seconds": round(time.perf_counter() - start, 1), "out": str(out)}


def _eval_counts(rows: list[dict]) -> dict:
    sizes = [len(r["tgt_text"]) for r in rows]
    images = _images_of(rows, ("qry_img_path", "tgt_img_path"))
    return {"queries": len(rows), "candidates_per_query": [min(sizes), max(sizes)] if sizes else [0, 0],
            "distinct_images": len(images)}
