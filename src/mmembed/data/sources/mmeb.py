"""MMEB-format training pairs as a training source (UniME stage 2; VLM2Vec's MMEB-train, the mini-MMEB's train).

Settings: `data.train_files` (files or folders of .jsonl / .json / .parquet, read by
`mmembed.data.mmeb_train`), `data.image_root`, `data.max_pixels`, `data.missing_hint` (how to build the
data when it is absent). Rows: `mmeb_pairs` {qry, qry_image, pos, pos_image, neg, neg_image}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmembed.data.heldout import drop_heldout_rows
from mmembed.data.images import DEFAULT_MAX_PIXELS, load_image
from mmembed.data.mmeb_train import TEXT_COLUMNS, read_mmeb_train
from mmembed.data.sources.base import ImageRowPreparer, Prepared, file_list
from mmembed.errors import DataConfigError, SkipCounter


class MMEBRows(ImageRowPreparer):
    """MMEB training rows -> the same keys with the images opened, plus `ok` (False when an image the row
    needs could not be read under `on_error=skip`; the objective masks such rows so every rank keeps its
    batch size) and `neg_ok`."""

    row_kind = "mmeb_pairs"

    def __call__(self, rows: Sequence[dict]) -> Prepared:
        if not rows:
            raise ValueError("got an empty batch")
        skips, out, truncated = SkipCounter(), [dict(row) for row in rows], 0
        for row in out:
            opened = {}
            for side in ("qry", "pos", "neg"):
                path = row.get(f"{side}_image")
                if path is not None:
                    row[f"{side}_image"] = load_image(path, on_error=self.on_error, max_pixels=self.max_pixels,
                                                      skips=skips)
                opened[side] = path is None or row[f"{side}_image"] is not None
            row["ok"] = opened["qry"] and opened["pos"]
            row["neg_ok"] = row.get("neg") is not None and opened["neg"]  # a missing negative is masked, not fatal
        if self.max_text_tokens:
            for side in ("qry", "pos", "neg"):
                present = [i for i, row in enumerate(out) if isinstance(row.get(side), str)]
                raw = [out[i][side] for i in present]
                cut = self.featurizer.truncate(raw, self.max_text_tokens)
                truncated += sum(a != b for a, b in zip(raw, cut))
                for i, text in zip(present, cut):
                    out[i][side] = text
        return Prepared(out, skips.count, truncated)


class MMEBTrainSource:
    """(query, positive[, negative]) rows of MMEB training files, image paths relative to `image_root`."""

    row_kind = MMEBRows.row_kind
    image_columns = ("qry_image_path", "pos_image_path", "neg_image_path")  # validation images are dropped

    def __init__(self, train_files: Sequence[str] | str, image_root: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 missing_hint: str | None = None):
        self.train_files = file_list(train_files)
        self.image_root, self.max_pixels, self.missing_hint = image_root, max_pixels, missing_hint

    def check_paths(self) -> None:
        missing = [f for f in [*self.train_files, self.image_root] if not Path(f).expanduser().exists()]
        if missing:
            hint = f"; {self.missing_hint}" if self.missing_hint else ""
            raise DataConfigError(f"MMEB training data not found: {missing} (data.train_files / data.image_root){hint}")

    def read_rows(self, on_error: str, skips: SkipCounter, heldout: frozenset[str]):
        rows = read_mmeb_train(self.train_files, self.image_root, on_error=on_error, skips=skips)
        return drop_heldout_rows(rows, TEXT_COLUMNS, heldout)

    def row_preparer(self, featurizer, max_text_tokens: int | None, on_error: str) -> MMEBRows:
        return MMEBRows(featurizer, max_text_tokens, on_error, self.max_pixels)
