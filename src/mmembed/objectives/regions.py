"""MM-GEM at region level: image-text InfoNCE and captioning whose rows may name a box of their image.

A row with a `box` (Flickr30k Entities region-phrase pairs, data=image_text_regions) stands for that
region: its contrastive vector is h1 of the box's RoI-pooled region vector, its caption prefix h2 of the
box's RoI-pooled tokens (model=mmgem's PoolAggregator, `region_route`). A row without one is the whole
image, exactly as in ImageTextInfoNCE / Captioning, so one batch mixes both levels and the joint
recipe (`objective=region_captioning_image_text`) trains them together. Boxes are mapped through the
featurizer's own resize and crop in the DataLoader workers; the model only sees normalised boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmembed.models.mmgem.extension import normalised_boxes, region_route
from mmembed.objectives.base import ObjectiveOutput, StepContext
from mmembed.objectives.captioning import Captioning
from mmembed.objectives.image_text import ImageTextInfoNCE


def row_boxes(featurizer, rows: Sequence[dict]) -> tuple[torch.Tensor, list[bool]]:
    """([B, 4] normalised boxes, usable) of the rows: NaN rows are whole images (and rows whose image did
    not open); a box wholly in the part the processor crops away (a tall original's top strip) is not
    usable: its row is masked out, never paired with the wrong pixels."""
    from mmembed.errors import DataConfigError

    nan = (float("nan"),) * 4
    boxes, usable = [], []
    for row in rows:
        box = row.get("box") if row["image"] is not None else None
        try:
            boxes.append(nan if box is None else tuple(normalised_boxes([row["image"]], [box], featurizer)[0].tolist()))
            usable.append(True)
        except DataConfigError:
            boxes.append(nan)
            usable.append(False)
    return torch.tensor(boxes, dtype=torch.float32), usable


def rejected(rows: Sequence[dict], usable: Sequence[bool]) -> int:
    """Boxed rows the mapping refused (logged as train/boxes_rejected, so a masked row is never silent)."""
    return sum(1 for row, ok in zip(rows, usable) if not ok and row.get("box") is not None)


class RegionTextInfoNCE(ImageTextInfoNCE):
    """ImageTextInfoNCE over (image or region, text) rows: a region row's candidate is its region vector."""

    name = "region_text_infonce"

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        out = super().features(featurizer, rows)
        boxes, usable = row_boxes(featurizer, rows)
        out["images"] = {**out["images"], "region_boxes": boxes}
        out["valid"] = out["valid"] & torch.tensor(usable)
        out["usable"] = out["usable"] & torch.tensor(usable)
        out["boxes_rejected"] = rejected(rows, usable)
        return out

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        out = super().loss(embeddings, features, ctx)
        out.metrics["boxes_rejected"] = float(features.get("boxes_rejected", 0))
        return out


class RegionCaptioning(Captioning):
    """Captioning over (image or region, text) rows: a region row's prefix is its box's RoI-pooled tokens."""

    name = "region_captioning"

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        opened = [row for row in rows if row["image"] is not None]
        boxes, usable = row_boxes(featurizer, opened)
        kept = [row for row, ok in zip(opened, usable) if ok]
        out = super().features(featurizer, kept)  # rows whose image did not open are left out too
        return {**out, "region_boxes": boxes[torch.tensor(usable, dtype=torch.bool)],
                "boxes_rejected": rejected(opened, usable)}

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        features = dict(features)
        boxes_rejected = features.pop("boxes_rejected", 0)
        with region_route(embedder.backbone.body, features.pop("region_boxes")):
            out = super().__call__(embedder, features, ctx)
        out.metrics["boxes_rejected"] = float(boxes_rejected)
        return out
