"""MMEB's training format read unchanged (VLM2Vec's MMEB-train; the mini-MMEB's train files): one row per
(query, positive) pair, each side text, an image or an image with text, plus optional mined negatives.

Columns: `qry`, `qry_image_path`, `pos_text`, `pos_image_path`, and optionally `neg_text`,
`neg_image_path` (UniME's hard-negative files; `python -m mmembed.prep.mine_negatives` writes them). Texts carry
their task instruction inline (`<|image_1|>\\nRepresent the given image for classification\\n`); MMEB's
`<|image_1|>` becomes mmembed's `<image>`, which the prompt renderer maps to each backbone's own image
token (`mmembed.data.evalsets.mmeb.as_input`, shared with the MMEB evaluation). Image paths are
relative to `image_root`. Rows come back flat, as strings, so the held-out sentence filter reads them:
`{qry, qry_image, pos, pos_image, neg, neg_image}` (an image is an absolute path or None; `neg` is None
when the row has no negative).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mmembed.data.evalsets.mmeb import as_input, read_rows
from mmembed.errors import DataConfigError, SkipCounter, check_on_error

log = logging.getLogger(__name__)

REQUIRED = ("qry", "qry_image_path", "pos_text", "pos_image_path")
SIDES = (("qry", "qry", "qry_image_path"), ("pos", "pos_text", "pos_image_path"), ("neg", "neg_text", "neg_image_path"))
TEXT_COLUMNS = ["qry", "pos", "neg"]


def _data_files(files: Sequence[str]) -> list[Path]:
    out = []
    for f in files:
        path = Path(f).expanduser()
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
        elif path.is_file():
            out.append(path)
        else:
            raise DataConfigError(f"MMEB training file {path} does not exist (data.train_files)")
    if not out:
        raise DataConfigError(f"no .jsonl / .json / .parquet MMEB training file in {list(files)} (data.train_files)")
    return out


def read_mmeb_train(files: Sequence[str] | str, image_root: str | Path, on_error: str = "skip",
                    skips: SkipCounter | None = None) -> list[dict]:
    """Every row of the files (a folder: its data files, name-sorted), image paths resolved and checked.

    A row whose image file is missing is skipped and counted (`on_error=skip`) or raises naming the row.
    """
    check_on_error(on_error)
    root = Path(image_root).expanduser()
    rows = []
    for path in _data_files([files] if isinstance(files, str) else list(files)):
        raw = read_rows(path)
        if not raw:
            raise DataConfigError(f"{path}: no rows")
        missing = [c for c in REQUIRED if c not in raw[0]]
        if missing:
            raise DataConfigError(f"{path}: missing MMEB training column(s) {missing}; found {sorted(raw[0])}. "
                                  f"A row has {', '.join(REQUIRED)} (and optionally neg_text, neg_image_path)")
        for i, row in enumerate(raw):
            where = f"{path} row {i}"
            flat, problem = {}, None
            for side, text_col, image_col in SIDES:
                text, image = row.get(text_col), row.get(image_col)
                if side == "neg" and not (isinstance(text, str) and text.strip()) and not (isinstance(image, str) and image.strip()):
                    flat["neg"], flat["neg_image"] = None, None
                    continue
                item = as_input(None, text, image, root, where if side == "qry" else f"{where} ({side})")
                if not item.text.strip() and item.image is None:
                    problem = f"empty {side}"
                elif item.image is not None and not item.image.is_file():
                    problem = f"{side} image {item.image} missing"
                flat[side], flat[f"{side}_image"] = item.text, None if item.image is None else str(item.image)
            if problem:
                if on_error == "raise":
                    raise DataConfigError(f"{where}: {problem} (data.on_error=skip skips and counts such rows)")
                if skips is not None:
                    skips.add(where, problem)
                continue
            rows.append(flat)
    skipped = skips.count if skips is not None else 0
    if skipped:
        log.warning("skipped %d MMEB training row(s) (missing images or empty sides); first: %s", skipped,
                    skips.examples[:3])
    if not rows:
        raise DataConfigError(f"no usable row in {files}")
    return rows
