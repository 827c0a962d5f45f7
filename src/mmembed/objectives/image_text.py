"""The image-text arm of E5-V's modality ablation: caption <-> image InfoNCE, candidates from every rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from mmembed.errors import ConfigError
from mmembed.losses.gather import gather_no_grad, rank_and_world
from mmembed.losses.infonce import distributed_info_nce
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext
from mmembed.objectives.target_identity import target_identity


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


def first_in_global_batch(image_ids: torch.Tensor, group=None) -> torch.Tensor:
    """[B] bool: this rank's rows whose image id appears at no earlier row of the global batch (rank order),
    i.e. `usable_rows`' rule applied to the concatenated batch, so 2 processes keep the rows 1 process keeps."""
    rank, _ = rank_and_world(group)
    every = gather_no_grad(image_ids, group).tolist()
    seen, first = set(), []
    for image_id in every:
        first.append(image_id not in seen)
        seen.add(image_id)
    b = image_ids.shape[0]
    return torch.tensor(first[rank * b:(rank + 1) * b], dtype=torch.bool)


class ImageTextInfoNCE(EmbeddingObjective):
    """Rows {image, image_key, text}: captions are the queries, images the candidates (and, with
    `symmetric`, also the other way round: the mean of both directions, as CLIP and MM-GEM train).

    Every row stays in the batch: unreadable or repeated images are masked (`valid`), so all ranks
    gather equally shaped tensors.
    """

    name = "image_text_infonce"
    row_kind = "image_text"

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        if not float(temperature) > 0:
            raise ConfigError(f"objective.temperature must be > 0, got {temperature}")
        self.temperature, self.symmetric = float(temperature), bool(symmetric)

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        images = [row["image"] if row["image"] is not None else placeholder_image() for row in rows]
        return {
            "texts": featurizer.featurize_text([row["text"] for row in rows]),
            "images": featurizer.featurize_images(images),
            # valid: opened and first in this rank's batch; loss() re-applies the repeat rule over the global
            # batch from `usable` (opened, and for regions mappable) and the image ids
            "valid": torch.tensor(usable_rows(rows)),
            "usable": torch.tensor([row["image"] is not None for row in rows]),
            "image_ids": torch.tensor([target_identity(row["image_key"], None) for row in rows], dtype=torch.long),
        }

    def groups(self, features: dict) -> list[dict]:
        return [features["texts"], features["images"]]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        texts, images = embeddings
        valid = features["valid"]  # as given when the features carry no image ids (hand-built ones)
        if "image_ids" in features:
            valid = features["usable"] & first_in_global_batch(features["image_ids"]).to(valid.device)
        out = distributed_info_nce(texts, images, temperature=self.temperature, valid=valid)
        loss, metrics = out.loss, {"num_negatives": float(out.num_negatives)}
        if self.symmetric:
            back = distributed_info_nce(images, texts, temperature=self.temperature, valid=valid)
            metrics.update({"loss_t2i": float(out.loss.detach()), "loss_i2t": float(back.loss.detach())})
            loss = (out.loss + back.loss) / 2
        return ObjectiveOutput(loss, metrics)
