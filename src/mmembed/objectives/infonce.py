"""E5-V's objective: in-batch InfoNCE over text pairs with hard negatives, candidates from every rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmembed.errors import ConfigError
from mmembed.losses.infonce import distributed_info_nce
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext

ANCHOR, POSITIVE, HARD_NEGATIVE = "sent0", "sent1", "hard_neg"


class TextPairInfoNCE(EmbeddingObjective):
    """Rows {sent0, sent1[, hard_neg]} -> one tokenised batch [anchors; positives; hard negatives].

    The three groups are embedded in one forward pass and split for the loss. Hard negatives are used
    when the rows carry the `hard_neg` column (a property of the data set, so the same on every rank);
    a row whose hard negative is missing gets a placeholder (its positive) masked out of the loss, so
    every rank gathers tensors of the same shape (a rank skipping a gather the others run would hang).
    """

    name = "infonce"
    row_kind = "text_pairs"

    def __init__(self, temperature: float = 0.05, use_hard_negatives: bool = True):
        if not float(temperature) > 0:  # `not >` also refuses NaN, as ImageTextInfoNCE does
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature, self.use_hard_negatives = float(temperature), bool(use_hard_negatives)

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        texts = [r[ANCHOR] for r in rows] + [r[POSITIVE] for r in rows]
        sizes = [len(rows), len(rows)]
        out = {}
        if self.use_hard_negatives and all(HARD_NEGATIVE in r for r in rows):
            present = [bool(r[HARD_NEGATIVE]) for r in rows]
            texts += [r[HARD_NEGATIVE] if ok else r[POSITIVE] for r, ok in zip(rows, present)]
            sizes.append(len(rows))
            if not all(present):
                out["hard_negative_valid"] = torch.tensor(present)
        out.update(inputs=featurizer.featurize_text(texts), sizes=sizes)
        return out

    def groups(self, features: dict) -> list[dict]:
        return [features["inputs"]]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        parts = torch.cat(list(embeddings)).split(features["sizes"])
        hard_negative = parts[2] if len(parts) > 2 else None
        # Every rank takes the mask path when any row lacks a hard negative here: pass an all-true mask
        # otherwise, so ranks never disagree on the collectives they run.
        mask = features.get("hard_negative_valid")
        if hard_negative is not None and mask is None and _distributed():
            mask = torch.ones(hard_negative.shape[0], dtype=torch.bool)
        out = distributed_info_nce(parts[0], parts[1], hard_negative, temperature=self.temperature,
                                   hard_negative_valid=mask)
        return ObjectiveOutput(out.loss, {"num_negatives": float(out.num_negatives)})


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
