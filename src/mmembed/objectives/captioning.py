"""Captioning (LLaVA's first stage, MM-GEM's generative half): next-token cross-entropy on the caption."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F

from mmembed.errors import ConfigError, DataConfigError
from mmembed.losses.gather import global_sum, rank_and_world
from mmembed.models.featurizer import DEFAULT_CAPTION_INSTRUCTION, IGNORE_INDEX
from mmembed.objectives.base import Objective, ObjectiveOutput, StepContext


class Captioning(Objective):
    """Rows {image, text}: `<instruction with the image>` then the caption; only the caption tokens (and
    the end of turn) are predicted. Rows whose image did not open are left out of the batch, so ranks may hold
    different row and token counts; the loss is the token mean over the whole global batch all the same (one
    all-reduce of the token count per step)."""

    name = "captioning"
    row_kind = "image_text"
    supports_grad_cache = False  # a token-level loss, not a function of pooled embeddings

    def __init__(self, instruction: str = DEFAULT_CAPTION_INSTRUCTION):
        if "<image>" not in instruction:
            raise ConfigError(f"objective.instruction must contain <image> (where the image goes), got {instruction!r}")
        self.instruction = instruction

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        kept = [row for row in rows if row["image"] is not None]
        if not kept:
            raise DataConfigError(f"no image of this batch could be read ({len(rows)} rows); see the warnings above")
        return featurizer.caption_inputs([r["image"] for r in kept], [r["text"] for r in kept], self.instruction)

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        """Mean next-token cross-entropy over the caption tokens (as `model(..., labels=)` computes it), with
        the vocabulary projection applied only where a caption token is predicted: the image and prompt
        positions (most of the sequence) never pay for the 49k-way output layer."""
        inputs = {k: v.to(embedder.device) for k, v in features.items()}
        labels = inputs.pop("labels")
        hidden = embedder.backbone.body(**inputs, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        predict = targets != IGNORE_INDEX  # position t predicts token t + 1
        logits = embedder.model.get_output_embeddings()(hidden[:, :-1][predict])
        summed = F.cross_entropy(logits.float(), targets[predict], reduction="sum")
        tokens = predict.sum()
        # Under DDP each rank's gradient is averaged over the W ranks: scaling this rank's sum by W / (all ranks'
        # tokens) makes that average the gradient of the global token mean (a mean of per-rank means would weight
        # a rank's tokens by 1 / its own count: 1.4e-3 off at step 1 on MM-GEM's 4 test rows, 9e-3 with regions).
        _, world = rank_and_world()
        all_tokens = global_sum(tokens.to(summed.dtype)) if world > 1 else tokens.to(summed.dtype)
        loss = summed * world / all_tokens.clamp_min(1)
        local_mean = summed.detach() / tokens.clamp_min(1)
        return ObjectiveOutput(loss, {"caption_tokens": float(tokens), "perplexity": float(local_mean.exp())})
