"""Image-caption pairs (region-phrase pairs included) as a training source, for any image-text objective.

Settings: `data.sources` (a list of caption sources, several layouts: `mmembed.data.image_text`) and
`data.max_pixels` (decompression-bomb guard). Rows: `image_text` {image (path), text, box}; images are
opened only when their batch is built (`ImageTextRows`, in DataLoader workers), under `data.on_error`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from mmembed.data.heldout import drop_heldout_rows
from mmembed.data.image_text import pairs_as_rows, read_image_text_sources, source_paths
from mmembed.data.images import DEFAULT_MAX_PIXELS, load_image
from mmembed.data.sources.base import ImageRowPreparer, Prepared
from mmembed.errors import DataConfigError, SkipCounter


class ImageTextRows(ImageRowPreparer):
    """Rows {image (path), text[, box]} -> {image (decoded RGB PIL image, or None when it could not be read
    under `on_error=skip`), image_key (the path, plus the box for a region), text (cut), box}. The objective
    decides what an unreadable image means (masked out for InfoNCE, dropped for captioning)."""

    row_kind = "image_text"

    def __init__(self, featurizer, max_text_tokens: int | None = 32, on_error: str = "skip",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        super().__init__(featurizer, max_text_tokens, on_error, max_pixels)  # E5-V's 32-token cut by default

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


def _key(image) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"id:{id(image)}"


class ImageTextSource:
    """The pairs of every configured caption source, in source order then file order."""

    row_kind = ImageTextRows.row_kind
    image_columns = ("image",)  # rows whose image is a validation image are dropped (the DataModule)

    def __init__(self, sources: Sequence[Mapping], max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.sources = [dict(s) for s in sources]
        self.max_pixels = max_pixels

    def check_paths(self) -> None:
        for source in self.sources:
            for key, path in source_paths(source):
                if not path.exists():
                    raise DataConfigError(
                        f"data source {source.get('name') or source.get('format')!r}: {key}={path} does not exist. "
                        "Set the data root (env MMEMBED_DATA / paths.data_root) or data.sources"
                    )

    def read_rows(self, on_error: str, skips: SkipCounter, heldout: frozenset[str]):
        # Images are not opened here (a missing one is skipped when its batch is built): nothing to count yet.
        return drop_heldout_rows(pairs_as_rows(read_image_text_sources(self.sources)), ["text"], heldout)

    def row_preparer(self, featurizer, max_text_tokens: int | None, on_error: str) -> ImageTextRows:
        return ImageTextRows(featurizer, max_text_tokens, on_error, self.max_pixels)
