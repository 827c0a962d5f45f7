"""MMEB evaluation files read unchanged: VLM2Vec's MMEB-eval (V1), MMEB-V2's image sets, or a local set in
that format (e.g. the mini-MMEB that `mmembed.prep.mini_mmeb.build` builds).

A row is one query with its own candidate list, the gold target first:
`qry_text, qry_img_path, tgt_text [list], tgt_img_path [list]`, plus `qry_inst` / `tgt_inst` where the
file splits the instruction off (MMEB-V2; V1 folds it into `qry_text`). An empty image path means no image.
Files: one per dataset (`.jsonl`, `.json` array or `.parquet`; the dataset is the file's stem), or a folder
of them, or a folder per dataset holding shards (the Hugging Face snapshot layout
`<Dataset>/test-00000-of-00001.parquet`). Image paths are relative to an image root.

MMEB marks the image's place with `<|image_1|>`; it becomes mmembed's `<image>`, which the prompt renderer
maps to each backbone's own image token. Instruction and text are joined by one space.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.errors import DataConfigError
from mmembed.models.prompts import IMAGE

MMEB_IMAGE = "<|image_1|>"
REQUIRED_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
INSTRUCTION_COLUMNS = ("qry_inst", "tgt_inst")
SUFFIXES = (".jsonl", ".json", ".parquet")
META_SUFFIX = ".meta.json"  # a dataset file's own metadata (meta-task, IND/OOD, provenance)
MMEB_LAYOUT = """
<root>/<Dataset>.jsonl|.json|.parquet     one MMEB eval file per dataset (optional <Dataset>.meta.json beside it)
<root>/<Dataset>/*.parquet                 or a folder per dataset (Hugging Face snapshot; optional meta.json)
rows: qry_text, qry_img_path, tgt_text [..], tgt_img_path [..] (+ qry_inst, tgt_inst); gold target first
<image_root>/<qry_img_path>, <image_root>/<tgt_img_path[i]>
"""


@dataclass(frozen=True)
class MMEBInput:
    """One thing to embed: instruction + text with `<image>` where the image goes, and the image file (or None)."""

    text: str
    image: Path | None = None

    @property
    def modality(self) -> str:
        """"text", "image" (nothing but the placeholder) or "image+text"."""
        if self.image is None:
            return "text"
        return "image" if not self.text.replace(IMAGE, "").strip() else "image+text"


@dataclass(frozen=True)
class MMEBQuery:
    query: MMEBInput
    candidates: tuple[MMEBInput, ...]  # the gold target first, as MMEB stores it


@dataclass
class MMEBDataset:
    name: str
    queries: list[MMEBQuery]
    files: list[Path]
    file_meta: dict = field(default_factory=dict)  # the dataset's .meta.json, if it has one
    rows_in_file: int = 0


def as_input(inst, text, image, image_root: Path, where: str) -> MMEBInput:
    """MMEB's (instruction, text, image path) as one input; raises DataConfigError naming `where` when bad."""
    parts = [str(p).strip() for p in (inst, text) if isinstance(p, str) and p.strip()]
    body = " ".join(parts).replace(MMEB_IMAGE, IMAGE)
    if body.count(IMAGE) > 1:  # V2 rows may mark the image in the instruction and the text: one image, one token
        first = body.index(IMAGE) + len(IMAGE)
        body = body[:first] + re.sub(r"\s*" + re.escape(IMAGE), "", body[first:])
    path = image_root / str(image) if isinstance(image, str) and image.strip() else None
    if path is None and IMAGE in body:
        raise DataConfigError(f"{where}: the text marks an image ({MMEB_IMAGE}) but the row gives no image path")
    if path is not None and IMAGE not in body:
        body = IMAGE + ("\n" + body if body else "")  # MMEB's own code puts the image first when unmarked
    return MMEBInput(body, path)


def read_rows(path: Path) -> list[dict]:
    """The rows of one MMEB file (.jsonl, .json array or {"data": [...]}, or .parquet), as dicts."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            rows = json.loads(text)
            return rows["data"] if isinstance(rows, dict) and "data" in rows else rows
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise DataConfigError(f"{path}: cannot read it as an MMEB file ({err})") from err


def parse_rows(rows: Sequence[dict], source: Path, image_root: Path) -> list[MMEBQuery]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataConfigError(f"{source}: expected rows of named columns (a JSON object per line)")
    if not rows:
        raise DataConfigError(f"{source}: no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DataConfigError(
            f"{source}: missing MMEB column(s) {missing}; found {sorted(rows[0])}. An MMEB eval row has "
            f"{', '.join(REQUIRED_COLUMNS)} (tgt_* are lists, the gold target first) and optionally "
            f"{', '.join(INSTRUCTION_COLUMNS)}"
        )
    queries = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        texts, images = row.get("tgt_text"), row.get("tgt_img_path")
        if not isinstance(texts, (list, tuple)) or not isinstance(images, (list, tuple)) or len(texts) != len(images):
            raise DataConfigError(f"{where}: tgt_text and tgt_img_path must be lists of one length (a candidate each)")
        if not texts:
            raise DataConfigError(f"{where}: the candidate list is empty")
        query = as_input(row.get("qry_inst"), row.get("qry_text"), row.get("qry_img_path"), image_root, where)
        candidates = tuple(
            as_input(row.get("tgt_inst"), t, p, image_root, f"{where} candidate {j}")
            for j, (t, p) in enumerate(zip(texts, images))
        )
        queries.append(MMEBQuery(query, candidates))
    return queries


def find_dataset_files(root: Path) -> dict[str, tuple[list[Path], Path]]:
    """Dataset name -> (its file(s), where its metadata would be): `root` itself, the data files in it
    (`<Dataset>.meta.json` beside each), and its sub-folders of shards (`<Dataset>/meta.json`)."""
    def meta_of(path: Path) -> Path:
        return path.with_name(path.name.removesuffix(path.suffix) + META_SUFFIX)

    if root.is_file():
        return {root.name.removesuffix(root.suffix): ([root], meta_of(root))}
    found: dict[str, tuple[list[Path], Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in SUFFIXES and not path.name.endswith(META_SUFFIX):
            found[path.name.removesuffix(path.suffix)] = ([path], meta_of(path))
        elif path.is_dir():
            shards = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in SUFFIXES
                      and p.name != "meta.json" and not p.name.endswith(META_SUFFIX)]
            if shards:
                found[path.name] = (shards, path / "meta.json")
    return found


def _file_meta(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataConfigError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataConfigError(f"{path}: expected a JSON object (meta_task, distribution, ...)")
    return meta


def read_mmeb(
    root: str | Path,
    image_root: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    max_queries: int | None = None,
    check_images: bool = True,
    hint: str | None = None,
) -> list[MMEBDataset]:
    """Every dataset under `root` (or those named in `datasets`, in that order), images under `image_root`
    (default: `root`). `max_queries` keeps each dataset's first N rows (a timed subset). With
    `check_images`, a missing image file fails here, before any model is loaded. `hint` is added to the
    missing-folder error (e.g. the command that builds the folder)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise BenchmarkLayoutError("MMEB", root, MMEB_LAYOUT, [f"{root} ({hint})" if hint else root])
    image_root = Path(image_root).expanduser() if image_root else (root if root.is_dir() else root.parent)
    found = find_dataset_files(root)
    if not found:
        raise BenchmarkLayoutError("MMEB", root, MMEB_LAYOUT, [f"no {'/'.join(SUFFIXES)} file"])
    names = list(datasets) if datasets else list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise DataConfigError(f"MMEB datasets {unknown} are not in {root}; found {sorted(found)}")
    out = []
    for name in names:
        files, meta_path = found[name]
        rows = [row for path in files for row in read_rows(path)]
        queries = parse_rows(rows, files[0] if len(files) == 1 else files[0].parent, image_root)
        out.append(MMEBDataset(name, queries[:max_queries] if max_queries else queries, files,
                               _file_meta(meta_path), len(rows)))
    if check_images:
        _check_images(out, image_root)
    return out


def _check_images(sets: list[MMEBDataset], image_root: Path) -> None:
    paths = {inp.image for d in sets for q in d.queries for inp in (q.query, *q.candidates) if inp.image is not None}
    missing = sorted(str(p) for p in paths if not p.is_file())
    if missing:
        shown = [f"{len(missing)} of {len(paths)} images"] + missing
        raise BenchmarkLayoutError("MMEB", image_root, MMEB_LAYOUT, shown)
