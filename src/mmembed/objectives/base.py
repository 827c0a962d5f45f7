"""What a training objective is: a small object that builds its batch features and returns a loss.

An objective has two halves, so a new recipe is one new file (and a YAML naming it with `_target_`):
- `features(featurizer, rows)` runs in DataLoader workers: it turns a batch of prepared rows (text
  pairs, or image-text rows whose images are already opened) into model inputs. It gets the picklable
  `Featurizer`, never the model.
- `__call__(embedder, features, ctx)` runs in the training step and returns an `ObjectiveOutput`: the
  loss and named metrics (logged as `train/<name>`).

Embedding objectives (`EmbeddingObjective`) split the second half into `groups(features)` (the model
inputs to embed) and `loss(embeddings, features, ctx)` (a pure function of the embeddings), which is
what GradCache needs: it embeds the groups in chunks itself. Any other objective sets
`supports_grad_cache = False` and the module refuses `grad_cache.chunk_size` for it.

`row_kind` says which rows an objective reads ("text_pairs": sent0/sent1/hard_neg; "image_text":
image/text); a DataModule refuses an objective whose rows it does not produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StepContext:
    """What an objective may want to know about the step it runs in."""

    global_step: int = 0
    training: bool = True


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)  # logged as train/<key>


class Objective:
    name = "objective"
    row_kind = "text_pairs"
    supports_grad_cache = False

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        raise NotImplementedError

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError


class EmbeddingObjective(Objective):
    """An objective whose loss is a pure function of the embeddings of some input groups."""

    supports_grad_cache = True

    def groups(self, features: dict) -> list[dict]:
        """The model inputs to embed, one dict per forward pass."""
        raise NotImplementedError

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        return self.loss([embedder(**group) for group in self.groups(features)], features, ctx)
