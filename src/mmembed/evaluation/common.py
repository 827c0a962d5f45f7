"""Helpers shared by the benchmark tasks: prompt records, chance levels, rounding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod


def prompt_record(embedder, kind: str, example: str | None = None, category: str | None = None) -> dict:
    """The template of `kind` and the exact string one example renders to (what the model saw)."""
    renderer = getattr(embedder, "renderer", None)
    if renderer is None:  # a prompt-free text encoder (the MiniLM baseline)
        return {"template": None, "rendered_example": example}
    return {"template": renderer.template(kind), "rendered_example": renderer.render(kind, example, category=category)}


def chance_recall(n_candidates: int, positives_per_query: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Expected Recall@k (percent) of a random ranking: P(at least one of p positives in the top k)."""
    out = {}
    n = n_candidates
    for k in ks:
        probs = [1.0 - prod((n - p - i) / (n - i) for i in range(min(k, n))) if p else 0.0 for p in positives_per_query]
        out[f"R@{k}"] = 100.0 * sum(probs) / max(len(probs), 1)
    return out


def floats(metrics: Mapping) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items()}
