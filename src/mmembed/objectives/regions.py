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

from mmembed.models.mmgem import normalised_boxes, region_route
from mmembed.objectives.base import ObjectiveOutput, StepContext
from mmembed.objectives.captioning import Captioning
from mmembed.objectives.image_text import ImageTextInfoNCE, placeholder_image


def row_boxes(featurizer, rows: Sequence[dict]) -> torch.Tensor:
    """[B, 4] normalised boxes of the rows (NaN rows: whole images, and rows whose image did not open)."""
    images = [row["image"] if row["image"] is not None else placeholder_image() for row in rows]
    boxes = [row.get("box") if row["image"] is not None else None for row in rows]
    return normalised_boxes(images, boxes, featurizer)


class RegionTextInfoNCE(ImageTextInfoNCE):
    """ImageTextInfoNCE over (image or region, text) rows: a region row's candidate is its region vector."""

    name = "region_text_infonce"

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        out = super().features(featurizer, rows)
        out["images"] = {**out["images"], "region_boxes": row_boxes(featurizer, rows)}
        return out


class RegionCaptioning(Captioning):
    """Captioning over (image or region, text) rows: a region row's prefix is its box's RoI-pooled tokens."""

    name = "region_captioning"

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        out = super().features(featurizer, rows)  # rows whose image did not open are left out
        return {**out, "region_boxes": row_boxes(featurizer, [row for row in rows if row["image"] is not None])}

    def __call__(self, embedder, features: dict, ctx: StepContext) -> ObjectiveOutput:
        features = dict(features)
        with region_route(embedder.backbone.body, features.pop("region_boxes")):
            return super().__call__(embedder, features, ctx)
