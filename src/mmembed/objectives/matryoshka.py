"""Matryoshka representation learning (MRL, Kusupati et al. 2022) around any embedding objective.

loss = sum_d weight_d * objective.loss(embeddings cut to their first d dimensions and re-normalised)

so the first d coordinates of every vector are an embedding of their own (truncate_dim at evaluation,
smaller FAISS indexes). The wrapped objective is unchanged: same features, same input groups, and its loss
is still a pure function of the embeddings, so GradCache and cross-device gathers work as they do for it
(every rank calls the inner loss once per dimension, in the same order). The full dimension is one of the
`dims` when listed; a dimension larger than the model's is refused at the first step with its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmembed.errors import ConfigError
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext


class Matryoshka(EmbeddingObjective):
    """`objective`: any EmbeddingObjective (InfoNCE, image-text, hard-negative NCE, distillation);
    `dims`: the nested sizes (e.g. [576, 256, 128, 64]); `weights`: one per dim (default 1 each)."""

    name = "matryoshka"

    def __init__(self, objective: EmbeddingObjective, dims: Sequence[int], weights: Sequence[float] | None = None):
        if not isinstance(objective, EmbeddingObjective) or not objective.supports_grad_cache:
            raise ConfigError(f"objective.objective={type(objective).__name__}: Matryoshka wraps an embedding "
                              "objective (a loss of the embeddings), e.g. objective/infonce")
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise ConfigError(f"objective.dims={dims}: distinct positive sizes, e.g. [576, 256, 128, 64]")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims) or any(w < 0 for w in weights) or not any(weights):
            raise ConfigError(f"objective.weights={weights}: one non-negative weight per dim {dims}, not all 0")
        self.objective, self.dims, self.weights = objective, dims, weights
        self.row_kind = objective.row_kind

    def prepare(self, datamodule):
        prepare = getattr(self.objective, "prepare", None)
        return prepare(datamodule) if callable(prepare) else None

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        return self.objective.features(featurizer, rows)

    def groups(self, features: dict) -> list[dict]:
        return self.objective.groups(features)

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        full = embeddings[0].shape[-1]
        if max(self.dims) > full:
            raise ConfigError(f"objective.dims={self.dims}: the model's embeddings have {full} dimensions")
        total, metrics = None, {}
        for dim, weight in zip(self.dims, self.weights):
            cut = list(embeddings) if dim == full else [F.normalize(e[..., :dim], dim=-1) for e in embeddings]
            out = self.objective.loss(cut, features, ctx)
            total = weight * out.loss if total is None else total + weight * out.loss
            metrics[f"dim{dim}/loss"] = float(out.loss.detach())
            metrics.update({f"dim{dim}/{key}": value for key, value in out.metrics.items()})
        return ObjectiveOutput(total, metrics)
