"""MMEB-format training pairs (UniME stage 2) for objectives reading `mmeb_pairs` rows. Files and columns:
`mmembed.data.mmeb_train`; rows are opened and cut by `mmembed.data.collate.MMEBRows`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmembed.data.collate import MMEBRows
from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.data.mmeb_train import TEXT_COLUMNS, read_mmeb_train
from mmembed.errors import DataConfigError
from mmembed.lit.datamodules import StsValidatedDataModule


class MMEBTrainDataModule(StsValidatedDataModule):
    """(query, positive[, negative]) rows of MMEB training files, validated on STS-B dev like every arm."""

    row_preparer_kind = MMEBRows.row_kind

    def __init__(self, train_files: Sequence[str] | str, image_root: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 missing_hint: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files)
        self.image_root, self.max_pixels, self.missing_hint = image_root, max_pixels, missing_hint

    def check_paths(self) -> None:
        missing = [f for f in [*self.train_files, self.image_root] if not Path(f).expanduser().exists()]
        if missing:
            hint = f"; {self.missing_hint}" if self.missing_hint else ""
            raise DataConfigError(f"MMEB training data not found: {missing} (data.train_files / data.image_root){hint}")
        super().check_paths()

    def read_train_set(self) -> list[dict]:
        rows = read_mmeb_train(self.train_files, self.image_root, on_error=self.on_error, skips=self.skips)
        return self.without_heldout(rows, TEXT_COLUMNS)

    def row_preparer(self) -> MMEBRows:
        return MMEBRows(self.featurizer, self.max_text_tokens, self.on_error, self.max_pixels)
