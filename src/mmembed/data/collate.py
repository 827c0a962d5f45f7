"""Batches for any objective: rows are prepared (texts cut, images opened), then the objective featurises them.

`ObjectiveCollator(prepare, objective, featurizer)` is the DataLoader's `collate_fn`. It holds the
picklable `Featurizer` and the objective (small objects), never the model, so DataLoader workers stay
light. The returned batch is `{"features": objective.features(...), "batch_size", "skipped", "truncated"}`;
`skipped` and `truncated` travel in the batch because a worker's counters live in another process.

Row preparers, one per kind of data (`row_kind`):
- `TextPairRows`: SimCSE rows {sent0, sent1[, hard_neg]}, each text cut to `max_text_tokens` tokens
  before templating (E5-V's cutoff);
- `ImageTextRows`: rows {image (path), text} -> {image (decoded RGB PIL image, or None when it could
  not be read under `on_error=skip`), image_key (the path), text (cut)}. The objective decides what an
  unreadable image means (masked out for InfoNCE, dropped for captioning).
- `MMEBRows`: MMEB training rows {qry, qry_image, pos, pos_image, neg, neg_image} (mmembed.data.mmeb_train)
  -> the same keys with the images opened, plus `ok` (False when an image the row needs could not be read
  under `on_error=skip`; the objective masks such rows so every rank keeps its batch size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from mmembed.data.images import DEFAULT_MAX_PIXELS, load_image
from mmembed.errors import DataConfigError, SkipCounter, check_on_error

TEXT_PAIR_COLUMNS = ("sent0", "sent1", "hard_neg")


@dataclass
class Prepared:
    rows: list[dict]
    skipped: int = 0
    truncated: int = 0


class TextPairRows:
    row_kind = "text_pairs"

    def __init__(self, featurizer, max_text_tokens: int | None = 32):
        self.featurizer, self.max_text_tokens = featurizer, max_text_tokens

    def __call__(self, rows: Sequence[dict]) -> Prepared:
        if not rows:
            raise ValueError("got an empty batch")
        columns = [c for c in TEXT_PAIR_COLUMNS if c in rows[0]]
        out = [dict(row) for row in rows]
        truncated = 0
        for column in columns:
            present = [i for i, row in enumerate(rows) if isinstance(row.get(column), str) and row[column]]
            raw = [rows[i][column] for i in present]
            cut = self.featurizer.truncate(raw, self.max_text_tokens)
            truncated += sum(a != b for a, b in zip(raw, cut))
            for i, text in zip(present, cut):
                out[i][column] = text
        return Prepared(out, 0, truncated)


class ImageTextRows:
    row_kind = "image_text"

    def __init__(self, featurizer, max_text_tokens: int | None = 32, on_error: str = "skip",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.featurizer, self.max_text_tokens = featurizer, max_text_tokens
        self.on_error, self.max_pixels = check_on_error(on_error), max_pixels

    def __call__(self, rows: Sequence[dict]) -> Prepared:
        if not rows:
            raise ValueError("got an empty batch")
        skips = SkipCounter()
        images = [load_image(row["image"], on_error=self.on_error, max_pixels=self.max_pixels, skips=skips)
                  for row in rows]
        if all(image is None for image in images):
            raise DataConfigError(f"no image of this batch could be read ({len(rows)} rows); see the warnings above")
        raw = [row["text"] for row in rows]
        cut = self.featurizer.truncate(raw, self.max_text_tokens)
        # a region row keeps its box; its key names the box, so two regions of one image are two candidates
        out = [{"image": image, "image_key": _key(row["image"]) + (f"#{row['box']}" if row.get("box") else ""),
                "text": text, "box": row.get("box")} for row, image, text in zip(rows, images, cut)]
        return Prepared(out, skips.count, sum(a != b for a, b in zip(raw, cut)))


class MMEBRows:
    row_kind = "mmeb_pairs"

    def __init__(self, featurizer, max_text_tokens: int | None = None, on_error: str = "skip",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.featurizer, self.max_text_tokens = featurizer, max_text_tokens
        self.on_error, self.max_pixels = check_on_error(on_error), max_pixels

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


def _key(image) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"id:{id(image)}"


class ObjectiveCollator:
    def __init__(self, prepare, objective, featurizer):
        if getattr(objective, "row_kind", None) != prepare.row_kind:
            raise DataConfigError(
                f"objective {type(objective).__name__} reads {objective.row_kind!r} rows, but this data module "
                f"gives {prepare.row_kind!r} rows: pick matching objective= and data= groups"
            )
        self.prepare, self.objective, self.featurizer = prepare, objective, featurizer

    def __call__(self, rows: Sequence[dict]) -> dict:
        prepared = self.prepare(rows)
        return {
            "features": self.objective.features(self.featurizer, prepared.rows),
            "batch_size": len(rows),
            "skipped": prepared.skipped,
            "truncated": prepared.truncated,
        }
