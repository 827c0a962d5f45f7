"""MM-GEM's vision heads, standing where the model's projector stood, and the routes that pick their path.

`MMGEMVisionHeads` holds the PoolAggregator, h1 (image / region embeddings, outside the LLM) and h2 (the
caption prefix, the model's own projector). The model calls it like any projector; `global_route(body)` and
`region_route(body, boxes)` switch, for the duration of a `with` block, what it returns.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from mmembed.errors import ConfigError
from mmembed.models.mmgem.pool_aggregator import PoolAggregator


class MMGEMVisionHeads(nn.Module):
    """Stands where the projector stood: tower tokens [B, N, C] -> PoolAggregator -> h2 prefix [B, g*g, D]
    (the LLM path), or, inside `global_route(body)`, h1(global vector) as [B, 1, D] (the image embedding).
    Inside `region_route(body, boxes)` (one normalised box per image) the same two paths read the box's
    RoI-pooled tokens instead: h2(g x g region tokens) as the caption prefix, h1(region vector)."""

    def __init__(self, h2: nn.Module, vision_dim: int, hidden: int, grid: int = 3, mode: str = "avg", seed: int = 0):
        super().__init__()
        self.aggregator = PoolAggregator(vision_dim, grid=grid, mode=mode)
        self.h2 = h2
        generator = torch.Generator().manual_seed(seed)
        self.h1 = nn.Sequential(nn.Linear(vision_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        with torch.no_grad():  # nn.Linear's own init, but from a fixed generator
            for layer in (self.h1[0], self.h1[2]):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=generator))
                layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=generator))
        self.to(next(h2.parameters()).dtype)
        self._global = False  # set by global_route while an image embedding is computed
        self._boxes: torch.Tensor | None = None  # set by region_route: [B, 5] normalised boxes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"MM-GEM pools a square token grid; got {tokens.shape[1]} vision tokens")
        if self._boxes is None:
            pooled = self.aggregator(tokens, hw=(side, side))
            if self._global:
                return self.h1(pooled.global_vector).unsqueeze(1)
            return self.h2(pooled.prefix_tokens)
        if len(self._boxes) != len(tokens):
            raise ValueError(f"region_route needs one box per image: {len(self._boxes)} boxes, {len(tokens)} images")
        boxes = self._boxes.to(tokens.device)
        whole = torch.isnan(boxes[:, 1:]).any(dim=1)  # rows without a box keep the whole image
        full = boxes.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(len(boxes), 4)
        boxes = torch.cat([boxes[:, :1], torch.where(whole[:, None], full, boxes[:, 1:])], dim=1)
        pooled = self.aggregator(tokens, boxes=boxes, hw=(side, side))
        if self._global:
            vector = torch.where(whole[:, None], pooled.global_vector, pooled.region_vector)
            return self.h1(vector).unsqueeze(1)
        regions = pooled.region_tokens.flatten(2).transpose(1, 2)
        return self.h2(torch.where(whole[:, None, None], pooled.prefix_tokens, regions))


def heads_in(body: nn.Module, what: str) -> list[MMGEMVisionHeads]:
    """Every MMGEMVisionHeads under `body`: the plain one, or peft's original and trained copies."""
    heads = [m for m in body.modules() if isinstance(m, MMGEMVisionHeads)]
    if not heads:
        raise ConfigError(f"this model has no MM-GEM heads (model=mmgem builds them): {what}")
    return heads


@contextmanager
def global_route(body: nn.Module):
    """Route the heads to h1: an image (or, inside region_route, a region) embedding."""
    heads = heads_in(body, "images cannot take the h1 path")
    for h in heads:
        h._global = True
    try:
        yield
    finally:
        for h in heads:
            h._global = False


@contextmanager
def region_route(body: nn.Module, boxes: torch.Tensor):
    """Inside: every image the heads see is replaced by its box's RoI-pooled region (boxes [B, 4]
    normalised, one per image, in batch order; a row of NaN keeps that whole image): region captions
    through h2, region embeddings through h1."""
    heads = heads_in(body, "region captions and embeddings need the PoolAggregator's RoI pooling")
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"region_route takes [B, 4] boxes (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    indexed = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1)
    for h in heads:
        h._boxes = indexed
    try:
        yield
    finally:
        for h in heads:
            h._boxes = None
