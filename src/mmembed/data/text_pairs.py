"""SimCSE-format text pairs (`sent0,sent1[,hard_neg]`) read with `datasets`, and their collator.

Works unchanged on SimCSE's `nli_for_simcse.csv` (275k triplets) and on the SNLI triplets in the
shared data folder; csv / tsv / json / jsonl / parquet files, or a hub dataset id where a hub is reachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ANCHOR, POSITIVE, HARD_NEGATIVE = "sent0", "sent1", "hard_neg"
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataConfigError(ValueError):
    """Bad data settings or files; the message names the setting or file to fix."""


def load_text_pairs(files: str | Sequence[str], split: str = "train", on_error: str = "skip"):
    """Load SimCSE-style pairs into a `datasets.Dataset` with columns sent0, sent1 (, hard_neg).

    Rows whose anchor or positive is missing/empty are skipped and counted (on_error="skip") or
    raise naming the row (on_error="raise").
    """
    import datasets

    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise DataConfigError("data.train_files is empty")
    local = [Path(f).expanduser() for f in files]
    if all(p.suffix in _BUILDERS for p in local):
        missing = [str(p) for p in local if not p.is_file()]
        if missing:
            raise DataConfigError(
                f"training file(s) not found: {missing}. Set data.train_files, or the data root "
                "(env MMEMBED_DATA / paths.data_root) so it points at the folder holding them"
            )
        builder = _BUILDERS[local[0].suffix]
        kwargs = {"delimiter": "\t"} if local[0].suffix == ".tsv" else {}
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in local], split=split, **kwargs)
    elif len(files) == 1:
        ds = datasets.load_dataset(files[0], split=split)  # a hub dataset id
    else:
        raise DataConfigError(f"data.train_files mixes local files and hub ids: {files}")
    columns = set(ds.column_names)
    if not {ANCHOR, POSITIVE} <= columns:
        raise DataConfigError(
            f"{files}: expected columns {ANCHOR},{POSITIVE}[,{HARD_NEGATIVE}] (SimCSE format), found {sorted(columns)}"
        )
    keep = [c for c in (ANCHOR, POSITIVE, HARD_NEGATIVE) if c in columns]
    ds = ds.select_columns(keep)
    return _drop_incomplete(ds, keep, on_error, files)


def _drop_incomplete(ds, columns, on_error: str, files):
    def ok(value) -> bool:
        return isinstance(value, str) and value.strip() != ""

    values = {c: ds[c] for c in columns}
    bad = [i for i in range(len(ds)) if not all(ok(values[c][i]) for c in columns)]
    if bad and on_error == "raise":
        row = ds[bad[0]]
        raise DataConfigError(f"{files}: row {bad[0]} has an empty or missing text: {row}")
    if bad:
        log.warning("skipped %d of %d text pairs with an empty or missing text (first rows: %s)", len(bad), len(ds), bad[:5])
        keep = sorted(set(range(len(ds))) - set(bad))
        ds = ds.select(keep)
    return ds


@dataclass
class TextPairCollator:
    """Rows -> one tokenised batch of [anchors; positives; hard negatives] and the group size.

    `featurize` is the embedder's `featurize_text` (prompt rendering + tokenisation), so training
    sees exactly the strings evaluation renders. Raw texts are cut to `max_tokens` before templating.
    """

    featurize: Callable[[Sequence[str]], dict]
    truncate: Callable[[Sequence[str]], list[str]]
    use_hard_negatives: bool = True

    def __call__(self, rows: list[dict]) -> dict:
        groups = [ANCHOR, POSITIVE]
        if self.use_hard_negatives and all(HARD_NEGATIVE in r and r[HARD_NEGATIVE] for r in rows):
            groups.append(HARD_NEGATIVE)
        texts = [self.truncate([r[g] for r in rows]) for g in groups]
        flat = [t for group in texts for t in group]
        return {"inputs": self.featurize(flat), "batch_size": len(rows), "groups": len(groups)}
