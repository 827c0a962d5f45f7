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


def kept_in_global_batch(image_ids: torch.Tensor, text_ids: torch.Tensor, usable: torch.Tensor,
                         group=None) -> torch.Tensor:
    """[B] bool: this rank's rows that stay in the loss. Among the usable rows of the global batch (every rank's,
    in rank order) that show one image, one is kept: the one with the smallest caption id (the earliest row on a
    tie). Decided by content, not position, so the kept caption does not depend on how the sampler split or
    ordered the rows over the ranks: 2 processes keep the rows 1 process keeps on the same global batch."""
    rank, _ = rank_and_world(group)
    b = image_ids.shape[0]
    every = gather_no_grad(torch.stack([image_ids, text_ids, usable.long()], dim=1), group).tolist()
    best: dict[int, tuple[int, int]] = {}
    for position, (image_id, text_id, ok) in enumerate(every):
        if ok:
            best[image_id] = min(best.get(image_id, (text_id, position)), (text_id, position))
    kept = [bool(ok) and best[image_id][1] == position for position, (image_id, _, ok) in enumerate(every)]
    return torch.tensor(kept[rank * b:(rank + 1) * b], dtype=torch.bool)


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
            # valid: opened and first in this rank's batch; loss() applies the repeat rule over the global
            # batch from `usable` (opened, and for regions mappable), the image ids and the caption ids
            "valid": torch.tensor(usable_rows(rows)),
            "usable": torch.tensor([row["image"] is not None for row in rows]),
            "image_ids": torch.tensor([target_identity(row["image_key"], None) for row in rows], dtype=torch.long),
            "text_ids": torch.tensor([target_identity(row["text"], None) for row in rows], dtype=torch.long),
        }

    def groups(self, features: dict) -> list[dict]:
        return [features["texts"], features["images"]]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        texts, images = embeddings
        valid = features["valid"]  # as given when the features carry no image ids (hand-built ones)
        if "image_ids" in features:
            kept = kept_in_global_batch(features["image_ids"], features["text_ids"], features["usable"])
            valid = kept.to(valid.device)
        out = distributed_info_nce(texts, images, temperature=self.temperature, valid=valid)
        loss, metrics = out.loss, {"num_negatives": float(out.num_negatives)}
        if self.symmetric:
            back = distributed_info_nce(images, texts, temperature=self.temperature, valid=valid)
            metrics.update({"loss_t2i": float(out.loss.detach()), "loss_i2t": float(back.loss.detach())})
            loss = (out.loss + back.loss) / 2
        return ObjectiveOutput(loss, metrics)
