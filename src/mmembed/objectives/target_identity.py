"""Target identities: which rows of a batch share one answer, and embedding each distinct answer once.

MMEB-style training rows repeat their targets constantly (easy-VQA's "yes"/"no", a classification task's few
labels, five captions of one image sharing their image target). Two rows with the same target text and the
same image pixels have one answer: a contrastive loss must not push a query away from a copy of its own
positive (the losses mask columns with the positive's id), and the model need not embed that answer twice
(one forward per distinct target; `expand` puts the rows back, and its backward sums the copies' gradients
into the one embedding, exactly as two forwards would).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def target_identity(text: str | None, image) -> int:
    """A 63-bit id of (text, image pixels): equal for equal content, whatever object or file it came from."""
    h = hashlib.blake2b(digest_size=8)
    h.update(b"T" + (text or "").encode("utf-8") + b"\0")
    if image is not None:
        h.update(f"I{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    return int.from_bytes(h.digest(), "big") >> 1  # non-negative int64


def distinct(ids: Sequence[int]) -> tuple[list[int], torch.Tensor]:
    """(first row of each distinct id, in order of appearance; [len(ids)] index of each row's distinct entry)."""
    first: dict[int, int] = {}
    index = [first.setdefault(i, len(first)) for i in ids]
    rows = [0] * len(first)
    for row, slot in reversed(list(enumerate(index))):
        rows[slot] = row
    return rows, torch.tensor(index, dtype=torch.long)


def expand(distinct_embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[len(index), D]: each row's embedding taken from its distinct entry (gradients of copies add up)."""
    return distinct_embeddings.index_select(0, index.to(distinct_embeddings.device))
