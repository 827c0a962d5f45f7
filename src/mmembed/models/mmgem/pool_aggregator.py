"""MM-GEM's PoolAggregator: fewer visual prefix tokens, a global vector, and RoI-pooled region tokens.

MM-GEM (arXiv 2405.19333) pools the vision tower's tokens before they reach the LLM (a shorter caption
prefix) and RoI-pools a box into region tokens and a region vector for region captioning and retrieval.
The paper gives no grid sizes or pooling type; these are our configurable choices:
- `grid` g (default 3): the prefix is g*g tokens. On the offline default's 7x7 EfficientNet-Lite0 map
  that is 49 -> 9 tokens, each covering about 2.3 x 2.3 cells (32 px per cell at 224 px).
- `mode="avg"`: prefix = adaptive average pooling to g x g; global vector = mean over the whole grid.
  No parameters: the prefix stays in the vision feature space, so MM-GEM's h1/h2 projections apply.
- `mode="attention"`: g*g + 1 learned queries attend over the H*W tokens (one nn.MultiheadAttention);
  the first g*g give the prefix, the last the global vector. A fixed 2-D sin-cos position code is added
  to the keys only: without it the pooling is permutation-invariant and the g*g queries cannot
  specialise on image regions; the values stay the raw features.
- regions: `roi_align` (below) to `region_grid` x `region_grid` (default g) bins, in both modes;
  region vector = mean of the region tokens.

Box conventions (one per function, never mixed):
- `PoolAggregator` takes boxes [K, 5] = (batch index, x1, y1, x2, y2) in NORMALISED image coordinates,
  (0, 0) = the image's top-left corner, (1, 1) = its bottom-right corner; they map to feature-map
  coordinates by x * W, y * H because the feature map tiles the whole (resized) image.
- `roi_align` takes the same layout in FEATURE-MAP coordinates, where cell (i, j) covers
  [j, j + 1) x [i, i + 1) and its centre is (j + 0.5, i + 0.5): torchvision.ops.roi_align's input with
  spatial_scale = 1.
Boxes with x2 <= x1 or y2 <= y1 are refused (DataConfigError); boxes partly or wholly outside the
image are allowed and follow torchvision's rule (samples beyond one cell outside read 0).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.errors import ConfigError, DataConfigError
from mmembed.models.mmgem.roi_align import roi_align

MODES = ("avg", "attention")


def sincos_position_code(height: int, width: int, dim: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """[H * W, dim] fixed 2-D sin-cos code (MAE's), dim % 4 == 0: half the channels encode the row, half the column."""
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim // 4))
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device),
        indexing="ij",
    )
    angles = [axis.reshape(-1, 1) * freqs for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).to(dtype)


class PoolOutput(NamedTuple):
    """prefix_tokens [B, g*g, C] (row-major bins), global_vector [B, C]; region_* only when boxes are given."""

    prefix_tokens: torch.Tensor
    global_vector: torch.Tensor
    region_tokens: torch.Tensor | None  # [K, C, region_grid, region_grid]
    region_vector: torch.Tensor | None  # [K, C]


class PoolAggregator(nn.Module):
    """Pools a vision feature grid into prefix tokens, a global vector and (given boxes) region tokens."""

    def __init__(
        self,
        in_dim: int,
        grid: int = 3,
        mode: str = "avg",
        num_heads: int = 1,
        region_grid: int | None = None,
        sampling_ratio: int = -1,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"PoolAggregator mode={mode!r}: expected one of {MODES}")
        if grid < 1 or (region_grid is not None and region_grid < 1):
            raise ConfigError(f"PoolAggregator grid={grid}, region_grid={region_grid}: both must be >= 1")
        if mode == "attention" and (in_dim % num_heads or in_dim % 4):
            raise ConfigError(f"PoolAggregator in_dim={in_dim} must be divisible by 4 and by num_heads={num_heads}")
        self.in_dim, self.grid, self.mode = in_dim, grid, mode
        self.region_grid = region_grid or grid
        self.sampling_ratio = sampling_ratio
        if mode == "attention":
            # g*g prefix queries + 1 global query, at the scale of unit-variance features
            self.queries = nn.Parameter(torch.randn(grid * grid + 1, in_dim) / math.sqrt(in_dim))
            self.attention = nn.MultiheadAttention(in_dim, num_heads, batch_first=True)

    def feature_map(self, features: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, C, H, W] as is, or [B, H*W, C] row-major tokens with hw=(H, W) -> [B, C, H, W]."""
        if features.dim() == 3:
            if hw is None or hw[0] * hw[1] != features.shape[1]:
                raise ConfigError(f"token features {tuple(features.shape)} need hw=(H, W) with H*W tokens, got hw={hw}")
            features = features.transpose(1, 2).reshape(features.shape[0], features.shape[2], *hw)
        if features.dim() != 4 or features.shape[1] != self.in_dim:
            raise ConfigError(
                f"PoolAggregator(in_dim={self.in_dim}) expects [B, {self.in_dim}, H, W] or [B, H*W, {self.in_dim}] "
                f"features, got shape {tuple(features.shape)}"
            )
        return features

    def pool_grid(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> (prefix tokens [B, g*g, C], global vector [B, C])."""
        if self.mode == "avg":
            prefix = F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)
            return prefix, fmap.mean(dim=(2, 3))
        batch, dim, height, width = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2)
        keys = tokens + sincos_position_code(height, width, dim, tokens.dtype, tokens.device)
        queries = self.queries.to(tokens.dtype).expand(batch, -1, -1)
        pooled, _ = self.attention(queries, keys, tokens, need_weights=False)
        return pooled[:, :-1], pooled[:, -1]

    def pool_regions(self, fmap: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised boxes [K, 5] -> (region tokens [K, C, r, r], region vector [K, C])."""
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise DataConfigError(f"boxes must be [K, 5] (batch index, x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
        height, width = fmap.shape[2:]
        boxes = boxes.to(fmap.dtype)
        scale = boxes.new_tensor([1.0, width, height, width, height])
        tokens = roi_align(fmap, boxes * scale, self.region_grid, self.sampling_ratio, aligned=True)
        return tokens, tokens.mean(dim=(2, 3))

    def forward(
        self, features: torch.Tensor, boxes: torch.Tensor | None = None, hw: tuple[int, int] | None = None
    ) -> PoolOutput:
        fmap = self.feature_map(features, hw)
        prefix, global_vector = self.pool_grid(fmap)
        if boxes is None:
            return PoolOutput(prefix, global_vector, None, None)
        region_tokens, region_vector = self.pool_regions(fmap, boxes)
        return PoolOutput(prefix, global_vector, region_tokens, region_vector)
