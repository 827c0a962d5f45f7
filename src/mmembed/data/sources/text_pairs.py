"""SimCSE-format text pairs as a training source (E5-V's text-only recipe, UniME stage 1's sentences).

Files: `data.train_files` (csv / tsv / json / jsonl / parquet with `sent0,sent1[,hard_neg]`, read by
`mmembed.data.text_pairs.load_text_pairs`, or a hub dataset id). Rows: `text_pairs`, each text cut to
`max_text_tokens` tokens before the prompt is applied (E5-V's cutoff).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmembed.data.heldout import drop_heldout_rows
from mmembed.data.sources.base import Prepared, file_list
from mmembed.data.text_pairs import load_text_pairs
from mmembed.errors import DataConfigError, SkipCounter

TEXT_PAIR_COLUMNS = ("sent0", "sent1", "hard_neg")


class TextPairRows:
    """SimCSE rows {sent0, sent1[, hard_neg]} with each present text cut to `max_text_tokens` tokens."""

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


class TextPairSource:
    """`sent0,sent1[,hard_neg]` rows of `train_files` (several files are concatenated in order)."""

    row_kind = TextPairRows.row_kind

    def __init__(self, train_files: Sequence[str] | str):
        self.train_files = file_list(train_files)

    def check_paths(self) -> None:
        # A name without a suffix is a hub dataset id, not a local file.
        missing = [f for f in self.train_files if Path(f).suffix and not Path(f).expanduser().is_file()]
        if missing:
            raise DataConfigError(
                f"training file(s) not found: {missing}. Set data.train_files, or the data root "
                "(env MMEMBED_DATA / paths.data_root) so it points at the folder holding them"
            )

    def read_rows(self, on_error: str, skips: SkipCounter, heldout: frozenset[str]):
        rows = load_text_pairs(self.train_files, on_error=on_error, skips=skips)
        return drop_heldout_rows(rows, rows.column_names, heldout)

    def row_preparer(self, featurizer, max_text_tokens: int | None, on_error: str) -> TextPairRows:
        return TextPairRows(featurizer, max_text_tokens)
