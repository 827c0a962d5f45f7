"""Helpers of the leakage tests (tests/data/test_official_split.py): a training set's text cells, and the cells that
hold an evaluation or validation sentence by the held-out filter's own rule (`mmembed.data.heldout.holds`: the cell
is the sentence, or ends with it after an instruction such as "...matches the given caption: <caption>")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mmembed.data.heldout import holds


def text_cells(rows) -> list[str]:
    """Every string cell of every column: a `datasets.Dataset` (text pairs, MMEB) or a list of dicts (image-text)."""
    if hasattr(rows, "column_names"):
        return [v for c in rows.column_names for v in rows[c] if isinstance(v, str)]
    return [v for row in rows for v in row.values() if isinstance(v, str)]


def holding(cells: list[str], sentences_by_set: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    """{set name: the cells holding one of its sentences}, sets that no cell holds left out."""
    every = frozenset().union(*sentences_by_set.values())
    hits = [c for c in cells if holds(c, every)]  # one pass over the union first: most cells hold nothing
    return {name: found for name, sentences in sentences_by_set.items()
            if (found := [c for c in hits if holds(c, sentences)])}


def describe(leaks: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{len(cells)} cells ({len(set(cells))} distinct) hold a sentence of {name}, e.g. {cells[0]!r}"
                     for name, cells in leaks.items())


def dropped_when_built(datamodule) -> int:
    """Rows the mini-MMEB builder already left out of the train files it wrote (counts.json `heldout_dropped`; a
    build from before the builder filtered has none): the same filter, run before training reads the files.
    0 for sources that are not built files."""
    files = getattr(datamodule.source, "train_files", None) or []
    counts = [Path(f).expanduser().parent / "counts.json" for f in files if Path(f).expanduser().is_dir()]
    return sum(sum(json.loads(p.read_text()).get("heldout_dropped", {}).values()) for p in counts if p.is_file())
