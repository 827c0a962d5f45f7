"""The image-text arm of E5-V's modality ablation: caption <-> image InfoNCE, candidates from every rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from mmembed.losses.infonce import distributed_info_nce
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext


def placeholder_image() -> Image.Image:
    """Stands in for an unreadable image so every rank's batch keeps its size; always masked out."""
    return Image.new("RGB", (32, 32), "white")


def usable_rows(rows: Sequence[dict]) -> list[bool]:
    """Rows whose image opened and whose image is not already in the batch (a second caption of the same
    image would make that image its own negative)."""
    seen, usable = set(), []
    for row in rows:
        ok = row["image"] is not None and row["image_key"] not in seen
        seen.add(row["image_key"])
        usable.append(ok)
    return usable


class ImageTextInfoNCE(EmbeddingObjective):
    """Rows {image, image_key, text}: captions are the queries, images the candidates (and, with
    `symmetric`, also the other way round: the mean of both directions, as CLIP and MM-GEM train).

    Every row stays in the batch: unreadable or repeated images are masked (`valid`), so all ranks
    gather equally shaped tensors.
    """

    name = "image_text_infonce"
    row_kind = "image_text"

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        if temperature <= 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature, self.symmetric = float(temperature), bool(symmetric)

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        valid = usable_rows(rows)
        images = [row["image"] if row["image"] is not None else placeholder_image() for row in rows]
        return {
            "texts": featurizer.featurize_text([row["text"] for row in rows]),
            "images": featurizer.featurize_images(images),
            "valid": torch.tensor(valid),
        }

    def groups(self, features: dict) -> list[dict]:
        return [features["texts"], features["images"]]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        texts, images = embeddings
        valid = features["valid"]
        out = distributed_info_nce(texts, images, temperature=self.temperature, valid=valid)
        loss, metrics = out.loss, {"num_negatives": float(out.num_negatives)}
        if self.symmetric:
            back = distributed_info_nce(images, texts, temperature=self.temperature, valid=valid)
            metrics.update({"loss_t2i": float(out.loss.detach()), "loss_i2t": float(back.loss.detach())})
            loss = (out.loss + back.loss) / 2
        return ObjectiveOutput(loss, metrics)
