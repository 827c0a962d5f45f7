"""A benchmark as a validation set: the inputs to embed (each with an id and a kind) and how its metrics follow
from the embedding table.

Training validates with Lightning's own loop (mmembed.lit.validation): each set's inputs go through the model in
the trainer's batches and devices, the embeddings come back with their ids (DDP pads with duplicates; the ids drop
them), and `ValidationPlan.score` computes the set's metrics from the whole table with the same scoring function
the benchmark's `run()` uses (`Benchmark.validation_plan`). No reader or metric is written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# What one input is, for the featurizer: `text` (a sentence with the text prompt), an image kind (`image`,
# `cir_target`: an image with that prompt) or a composed kind (`cir_query`: an image and a text).
TEXT_KIND = "text"


@dataclass
class ValidationPlan:
    """`items[i]` = {"id": i, "kind": ..., "text": str | None, "image": path | None}; `score(ids, emb)` takes the
    de-duplicated ids and their embeddings (any order; ids of unreadable images absent) and returns the metrics."""

    items: list[dict]
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    meta: dict

    def __post_init__(self):
        for i, item in enumerate(self.items):
            item["id"] = i


def text_item(text: str) -> dict:
    return {"kind": TEXT_KIND, "text": text, "image": None}


def image_item(path, kind: str = "image", text: str | None = None) -> dict:
    return {"kind": kind, "text": text, "image": str(path)}


def table(ids: torch.Tensor, emb: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """([n, D] embeddings by id (rows of absent ids are zero), the ids present, ascending)."""
    ids = ids.reshape(-1).long().cpu()
    out = torch.zeros(n, emb.shape[-1] if emb.numel() else 0, dtype=emb.dtype)
    out[ids] = emb.cpu()
    return out, sorted(ids.tolist())
