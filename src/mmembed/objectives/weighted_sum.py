"""Several objectives in one step: loss = sum_k weight_k * loss_k (MM-GEM: InfoNCE + captioning)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mmembed.errors import ConfigError
from mmembed.objectives.base import EmbeddingObjective, Objective, ObjectiveOutput, StepContext


class WeightedSum(EmbeddingObjective):
    """`parts` name -> objective (all reading the same kind of rows); `weights` name -> float (default 1;
    0 leaves the part out: it is neither featurised nor run).

    Each part's features are built from the same rows and kept under its name. Metrics are logged as
    `<part>/<metric>` plus `<part>/loss` (unweighted). Under GradCache every part must be an embedding
    objective; their groups are embedded together and the summed loss is one function of them.
    """

    name = "weighted_sum"

    def __init__(self, parts: Mapping[str, Objective], weights: Mapping[str, float] | None = None):
        if not parts:
            raise ConfigError("objective.parts is empty: name at least one objective")
        unknown = sorted(set(weights or {}) - set(parts))
        if unknown:
            raise ConfigError(f"objective.weights names {unknown}, which are not in objective.parts {sorted(parts)}")
        weights = {name: float((weights or {}).get(name, 1.0)) for name in parts}
        # A part weighted 0 is not computed at all (no features, no forward pass): an ablation arm such
        # as MM-GEM's embedding-only run costs what that objective alone costs.
        self.disabled = sorted(name for name, w in weights.items() if w == 0.0)
        self.parts = {name: part for name, part in parts.items() if weights[name] != 0.0}
        if not self.parts:
            raise ConfigError(f"every objective.weights is 0 ({weights}): at least one part must count")
        self.weights = {name: weights[name] for name in self.parts}
        kinds = {part.row_kind for part in self.parts.values()}
        if len(kinds) > 1:
            raise ConfigError(f"objective.parts read different kinds of rows {sorted(kinds)}; one batch feeds them all")
        self.row_kind = kinds.pop()
        self.supports_grad_cache = all(isinstance(p, EmbeddingObjective) and p.supports_grad_cache
                                       for p in self.parts.values())

    def prepare(self, datamodule) -> None:
        """The run's one-time preparation (e.g. a distillation teacher's cache), for each part that has one."""
        for part in self.parts.values():
            prepare = getattr(part, "prepare", None)
            if callable(prepare):
                prepare(datamodule)

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        return {name: part.features(featurizer, rows) for name, part in self.parts.items()}

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        outputs = {name: part(embedder, features[name], ctx) for name, part in self.parts.items()}
        return self._combine(outputs)

    # ---- GradCache: the parts' groups embedded together ----
    def groups(self, features: dict) -> list[dict]:
        return [group for name, part in self.parts.items() for group in part.groups(features[name])]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        outputs, start = {}, 0
        for name, part in self.parts.items():
            count = len(part.groups(features[name]))
            outputs[name] = part.loss(list(embeddings[start : start + count]), features[name], ctx)
            start += count
        return self._combine(outputs)

    def _combine(self, outputs: dict[str, ObjectiveOutput]) -> ObjectiveOutput:
        loss = sum(self.weights[name] * out.loss for name, out in outputs.items())
        metrics = {}
        for name, out in outputs.items():
            metrics[f"{name}/loss"] = float(out.loss.detach())
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
        return ObjectiveOutput(loss, metrics)
