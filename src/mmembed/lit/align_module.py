"""Projector alignment: the captioning (language-model) loss on image-caption pairs.

Everything but the projector is frozen (see `pipeline.build_embedder`, `model.train_projector`); the
loss is the mean cross-entropy over caption tokens (`mmembed.models.captioning`). Optimiser,
schedule, adapter-only checkpoints and the NaN guard are the contrastive module's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.lit.module import EmbeddingLitModule
from mmembed.models.captioning import IGNORE_INDEX


class CaptionAlignLitModule(EmbeddingLitModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.chunk_size is not None:
            raise ValueError("loss.cache.chunk_size (GradCache) applies to contrastive losses, not captioning")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, supervised = self.caption_loss(batch["inputs"])
        self._check_and_log(loss, None, batch)
        self.log("train/caption_tokens", float(supervised), batch_size=int(batch["batch_size"]))
        return loss

    def caption_loss(self, inputs: dict) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy over the caption tokens (as `model(..., labels=)` computes it),
        with the vocabulary projection applied only where a caption token is predicted: the image and
        prompt positions (most of the sequence) never pay for the 49k-way output layer."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        hidden = self.embedder.backbone.body(**inputs, use_cache=False).last_hidden_state
        targets = labels[:, 1:].to(hidden.device)
        predict = targets != IGNORE_INDEX  # position t predicts token t + 1
        logits = self.embedder.model.get_output_embeddings()(hidden[:, :-1][predict])
        return F.cross_entropy(logits.float(), targets[predict]), int(predict.sum())

    def _check_and_log(self, loss: torch.Tensor, num_negatives: int | None, batch: dict) -> None:
        super()._check_and_log(loss, num_negatives, batch)
        self.log("train/perplexity", torch.exp(loss.detach()), batch_size=int(batch["batch_size"]))
