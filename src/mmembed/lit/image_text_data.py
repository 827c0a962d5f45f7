"""Image-caption training data for any image-text objective (InfoNCE, captioning, both). Sources and
layouts: `mmembed.data.image_text`; rows are opened and cut by `mmembed.data.collate.ImageTextRows`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmembed.data.collate import ImageTextRows
from mmembed.data.image_text import pairs_as_rows, read_image_text_sources, source_paths
from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.errors import DataConfigError
from mmembed.lit.datamodules import StsValidatedDataModule


class ImageTextDataModule(StsValidatedDataModule):
    """Image-caption pairs from `sources` (see `mmembed.data.image_text`), validated on STS-B dev."""

    row_preparer_kind = ImageTextRows.row_kind

    def __init__(self, sources: Sequence[Mapping], max_pixels: int | None = DEFAULT_MAX_PIXELS, **kwargs):
        super().__init__(**kwargs)
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
        super().check_paths()

    def read_train_set(self) -> list[dict]:
        return self.without_heldout(pairs_as_rows(read_image_text_sources(self.sources)), ["text"])

    def row_preparer(self) -> ImageTextRows:
        return ImageTextRows(self.featurizer, self.max_text_tokens, self.on_error, self.max_pixels)
