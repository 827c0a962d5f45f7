"""What a training data source is (the contract the one DataModule relies on) and what a row preparer returns.

A new kind of training data is one file holding its source and its row preparer, and one YAML
(`conf/data/<name>.yaml`) naming `mmembed.lit.datamodule.TrainingDataModule` and the source by `_target_`.
Plain Python: no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.errors import SkipCounter, check_on_error


@dataclass
class Prepared:
    """A batch's rows after preparation (texts cut, images opened), with what the policy dropped or cut."""

    rows: list[dict]
    skipped: int = 0
    truncated: int = 0


class RowPreparer(Protocol):
    row_kind: str

    def __call__(self, rows: Sequence[dict]) -> Prepared: ...


class ImageRowPreparer:
    """What the row preparers that open images share: the featurizer (to cut texts), the text cutoff, the
    bad-image policy and the decompression-bomb guard. Subclasses implement `__call__`."""

    row_kind = ""

    def __init__(self, featurizer, max_text_tokens: int | None = None, on_error: str = "skip",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.featurizer, self.max_text_tokens = featurizer, max_text_tokens
        self.on_error, self.max_pixels = check_on_error(on_error), max_pixels


class DataSource(Protocol):
    """One kind of training data. Its settings are its constructor's arguments (`data.<setting>` in config)."""

    # The rows it gives (`text_pairs`, `image_text`, `mmeb_pairs`, ...): the objective's `row_kind` must match.
    row_kind: str

    def check_paths(self) -> None:
        """Raise `DataConfigError` naming the setting when a configured local path does not exist."""

    def read_rows(self, on_error: str, skips: SkipCounter, heldout: frozenset[str]) -> tuple[Any, int]:
        """(every training row minus those holding a `heldout` sentence, how many such rows were dropped).

        Rows are a list of dicts or a `datasets.Dataset`; bad rows follow `on_error` and are counted in `skips`."""

    def row_preparer(self, featurizer, max_text_tokens: int | None, on_error: str) -> RowPreparer:
        """The picklable callable that turns a batch of rows into `Prepared` rows inside DataLoader workers."""


def file_list(files: Sequence[str] | str) -> list[str]:
    """A setting that takes one file or several, as a list."""
    return [files] if isinstance(files, str) else list(files)
