"""RoIAlign in plain PyTorch (torchvision.ops.roi_align's numbers; torchvision cannot be installed here):
the PoolAggregator's region tokens. Boxes [K, 5] = (batch index, x1, y1, x2, y2) in FEATURE-MAP coordinates,
where cell (i, j) covers [j, j + 1) x [i, i + 1) and its centre is (j + 0.5, i + 0.5) (spatial_scale = 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.errors import DataConfigError


def _bin_weights(start: torch.Tensor, length: torch.Tensor, bins: int, size: int, sampling_ratio: int) -> torch.Tensor:
    """[K, bins, size]: weight of each feature row (or column) in each bin's average along one axis.

    torchvision's RoIAlign samples a regular grid of points per bin and averages their bilinear values.
    Bilinear interpolation is separable and the sample grid is a product of its row and column
    positions, so a bin's average is rows_weights @ feature @ cols_weights^T: each factor is the mean,
    over that axis's sample points, of the 1-D linear-interpolation weights. Per sample position p:
    p outside [-1, size] reads 0; p < 0 is clamped to 0; p >= size - 1 reads the last cell; otherwise
    cells floor(p) and floor(p) + 1 get weights 1 - frac and frac (torchvision's bilinear_interpolate).
    """
    bin_size = length / bins
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:  # torchvision's adaptive rule: ceil(roi size / bins) points per bin, per box
        grid = torch.ceil(length / bins).clamp(min=1)
    steps = torch.arange(int(grid.max().item()), dtype=start.dtype, device=start.device)
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)
    # positions [K, bins, S]; sample s of a box whose grid is smaller than S is masked out
    pos = start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]
    pos = pos + (steps[None, None, :] + 0.5) * (bin_size / grid)[:, None, None]
    used = (steps[None, :] < grid[:, None]).to(start.dtype)[:, None, :]
    inside = ((pos >= -1) & (pos <= size)).to(start.dtype)
    pos = pos.clamp(min=0)
    low = pos.floor().long().clamp(max=size - 1)
    at_edge = low >= size - 1
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    high = torch.where(at_edge, low, low + 1)
    frac = (pos - low.to(pos.dtype)).unsqueeze(-1)
    weights = F.one_hot(low, size).to(pos.dtype) * (1 - frac) + F.one_hot(high, size).to(pos.dtype) * frac
    weights = weights * (inside * used / grid[:, None, None]).unsqueeze(-1)
    return weights.sum(dim=2)


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | tuple[int, int],
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> torch.Tensor:
    """RoIAlign of boxes [K, 5] (batch index, x1, y1, x2, y2) in feature-map coordinates -> [K, C, oh, ow].

    Same result as torchvision.ops.roi_align(features, boxes, output_size, spatial_scale=1,
    sampling_ratio, aligned). aligned=True shifts the box by -0.5 so the sample point x = j lands on
    cell j's centre: bin (ph, pw) averages the bilinear values at
        y = y1 - 0.5 + ph * bh + (iy + 0.5) * bh / gh,  x = x1 - 0.5 + pw * bw + (ix + 0.5) * bw / gw
    with bh = (y2 - y1) / oh, bw = (x2 - x1) / ow and gh x gw points per bin: gh = gw = sampling_ratio
    if > 0, else ceil(bh) and ceil(bw) per box. aligned=False: no shift, box sizes floored at 1 cell.
    Differentiable with respect to `features` (boxes get no gradient, as in torchvision).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got shape {tuple(features.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be [K, 5] (batch index, x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    batch, channels, height, width = features.shape
    if len(boxes) == 0:
        return features.new_zeros(0, channels, out_h, out_w)
    # box geometry in at least float32: bf16 would move a coordinate like 6.3 to 6.3125
    boxes = boxes.detach().to(features.device, torch.promote_types(features.dtype, torch.float32))
    index = boxes[:, 0]
    if (index != index.round()).any() or (index < 0).any() or (index >= batch).any():
        raise DataConfigError(f"box batch indices must be integers in [0, {batch}), got {index.tolist()}")
    x1, y1, x2, y2 = boxes[:, 1:].unbind(1)
    bad = ~((x2 > x1) & (y2 > y1))  # NaN coordinates count as degenerate too
    if bad.any():
        raise DataConfigError(f"boxes need x2 > x1 and y2 > y1; degenerate boxes: {boxes[bad].tolist()}")
    offset = 0.5 if aligned else 0.0
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision's legacy rule: never smaller than one cell
        box_w, box_h = box_w.clamp(min=1), box_h.clamp(min=1)
    rows = _bin_weights(y1 - offset, box_h, out_h, height, sampling_ratio)
    cols = _bin_weights(x1 - offset, box_w, out_w, width, sampling_ratio)
    kernel = (rows[:, :, None, :, None] * cols[:, None, :, None, :]).reshape(len(boxes), out_h * out_w, -1)
    kernel = kernel.to(features.dtype)
    # One matmul per image over its boxes' kernels (padded to the most boxes any image has) instead of
    # copying every box's [C, H, W] map: less memory traffic in forward and backward.
    index = index.long()
    member = F.one_hot(index, batch)
    slot = (member.cumsum(0) * member).sum(1) - 1  # the box's rank among its image's boxes
    slots = int(slot.max()) + 1
    flat = index * slots + slot
    padded = kernel.new_zeros(batch * slots, *kernel.shape[1:]).index_copy_(0, flat, kernel)
    pooled = padded.view(batch, -1, height * width) @ features.flatten(2).transpose(1, 2)
    pooled = pooled.view(batch * slots, out_h * out_w, -1).index_select(0, flat)
    return pooled.transpose(1, 2).reshape(len(boxes), channels, out_h, out_w)
