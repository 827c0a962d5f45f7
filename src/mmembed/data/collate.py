"""Batches for any objective: rows are prepared (texts cut, images opened), then the objective featurises them.

`ObjectiveCollator(prepare, objective, featurizer)` is the DataLoader's `collate_fn`. It holds the
picklable `Featurizer` and the objective (small objects), never the model, so DataLoader workers stay
light. The returned batch is `{"features": objective.features(...), "batch_size", "skipped", "truncated"}`;
`skipped` and `truncated` travel in the batch because a worker's counters live in another process.

`prepare` is the row preparer of the data source (`source.row_preparer(...)`, mmembed.data.sources): each
preparer lives in its source's file (`TextPairRows`, `ImageTextRows`, `MMEBRows`) and names its `row_kind`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmembed.data.sources.base import Prepared
from mmembed.data.sources.image_text import ImageTextRows
from mmembed.data.sources.mmeb import MMEBRows
from mmembed.data.sources.text_pairs import TextPairRows
from mmembed.errors import DataConfigError

# The preparers' former home: these names are still importable from here (callers may move to the sources).
__all__ = ["ObjectiveCollator", "Prepared", "TextPairRows", "ImageTextRows", "MMEBRows"]


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
