"""PoolAggregator and its hand-written roi_align (torchvision.ops.roi_align semantics, no torchvision here).

The reference is a brute-force sampler: python loops over boxes, bins and sample points, each point
read with the bilinear rule written out as torchvision's C++ kernel states it. All checks run in
float64, so "equal" means within 1e-12 (rounding of a few dozen additions).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmembed.errors import ConfigError, DataConfigError
from mmembed.models.mmgem.pool_aggregator import PoolAggregator
from mmembed.models.mmgem.roi_align import roi_align

ATOL = 1e-12


def bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate for one point of a [C, H, W] map, in cell-index coordinates."""
    _, height, width = fmap.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(fmap.shape[0], dtype=fmap.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def brute_roi_align(features, boxes, output_size, sampling_ratio=-1, aligned=True) -> torch.Tensor:
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    rows = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        offset = 0.5 if aligned else 0.0
        start_x, start_y = x1 - offset, y1 - offset
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        out = torch.zeros(features.shape[1], out_h, out_w, dtype=features.dtype)
        for ph in range(out_h):
            for pw in range(out_w):
                acc = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc = acc + bilinear(features[int(b)], y, x)
                out[:, ph, pw] = acc / max(grid_h * grid_w, 1)
        rows.append(out)
    return torch.stack(rows)


@pytest.fixture
def features() -> torch.Tensor:
    return torch.randn(2, 5, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# (batch index, x1, y1, x2, y2) in feature-map coordinates
BOXES = torch.tensor(
    [
        [0, 1.3, 0.7, 4.9, 5.2],  # fractional, inside
        [1, -1.6, -0.8, 2.4, 3.1],  # partly outside the top-left corner
        [0, 5.1, 4.4, 9.3, 8.7],  # partly outside the bottom-right corner
        [1, 3.12, 3.2, 3.15, 3.26],  # tiny (a few hundredths of a cell)
        [0, 0.0, 0.0, 7.0, 7.0],  # the whole map
        [1, 8.5, 9.0, 11.0, 12.0],  # entirely beyond the map: more than one cell outside reads 0
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("output_size", [1, 2, 3, (2, 3)])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_brute_force_sampler(features, sampling_ratio, output_size, aligned):
    got = roi_align(features, BOXES, output_size, sampling_ratio, aligned)
    want = brute_roi_align(features, BOXES, output_size, sampling_ratio, aligned)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert got[-1].abs().max() == 0  # the box beyond the map


def test_roi_align_on_a_linear_ramp_gives_bin_centre_values():
    # f = x + 2y at cell (y, x); bilinear sampling of a linear function is exact, and the symmetric
    # sample points of a bin average to its centre. Box (0.5, 0.5)-(1.5, 1.5) in feature coordinates
    # spans cell centres 0..1 (aligned): 2x2 bins centred at 0.25 and 0.75 on each axis.
    ramp = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    got = roi_align(ramp, torch.tensor([[0, 0.5, 0.5, 1.5, 1.5]]), 2, sampling_ratio=2)
    want = torch.tensor([[0.25 + 0.5, 0.75 + 0.5], [0.25 + 1.5, 0.75 + 1.5]], dtype=torch.float64)
    torch.testing.assert_close(got[0, 0], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sampling_ratio", [-1, 7, 14])
def test_full_image_box_at_1x1_is_exactly_average_pooling(features, sampling_ratio):
    # aligned: the 7-cell box starts at -0.5, so 7 points per bin land on the 7 cell centres (the
    # adaptive rule picks ceil(7 / 1) = 7); with 14 points each cell gets 2 points' weight, the two
    # clamped border points included. Both are the exact mean, not an approximation.
    full = torch.tensor([[0, 0, 0, 7, 7], [1, 0, 0, 7, 7]], dtype=torch.float64)
    got = roi_align(features, full, 1, sampling_ratio)
    torch.testing.assert_close(got[:, :, 0, 0], features.mean(dim=(2, 3)), atol=ATOL, rtol=0)


def test_full_image_box_at_map_resolution_returns_the_map(features):
    full = torch.tensor([[1, 0, 0, 7, 7]], dtype=torch.float64)
    torch.testing.assert_close(roi_align(features, full, 7, sampling_ratio=1)[0], features[1], atol=ATOL, rtol=0)


def test_roi_align_gradients_match_brute_force(features):
    a = features.clone().requires_grad_(True)
    b = features.clone().requires_grad_(True)
    weights = torch.randn(len(BOXES), 5, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (roi_align(a, BOXES, 2) * weights).sum().backward()
    (brute_roi_align(b, BOXES, 2) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=0)
    assert a.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "box", [[0, 3.0, 1.0, 3.0, 4.0], [0, 3.0, 1.0, 2.0, 4.0], [0, 1.0, 4.0, 3.0, 4.0], [0, math.nan, 1.0, 3.0, 4.0]]
)
def test_degenerate_boxes_are_refused(features, box):
    with pytest.raises(DataConfigError, match="x2 > x1 and y2 > y1"):
        roi_align(features, torch.tensor([box]), 2)


def test_no_boxes_give_no_regions(features):
    assert roi_align(features, torch.zeros(0, 5), 3).shape == (0, 5, 3, 3)


@pytest.mark.parametrize("index", [2, -1, 0.5])
def test_bad_batch_index_is_refused(features, index):
    with pytest.raises(DataConfigError, match="batch indices"):
        roi_align(features, torch.tensor([[index, 0.0, 0.0, 1.0, 1.0]]), 2)


def test_avg_prefix_is_adaptive_average_pooling_over_hand_cut_bins(features):
    # adaptive pooling of 7 cells into 3 bins uses [floor(7i/3), ceil(7(i+1)/3)) = [0,3), [2,5), [4,7)
    out = PoolAggregator(5, grid=3)(features)
    spans = [(0, 3), (2, 5), (4, 7)]
    want = torch.stack([features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)) for r0, r1 in spans for c0, c1 in spans], dim=1)
    torch.testing.assert_close(out.prefix_tokens, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.prefix_tokens, F.adaptive_avg_pool2d(features, 3).flatten(2).transpose(1, 2))
    torch.testing.assert_close(out.global_vector, features.mean(dim=(2, 3)), atol=ATOL, rtol=0)
    assert out.region_tokens is None and out.region_vector is None


def test_token_input_equals_map_input(features):
    tokens = features.flatten(2).transpose(1, 2)  # [B, 49, C], row-major like the vision tower's output
    aggregator = PoolAggregator(5, grid=2)
    box = torch.tensor([[1, 0.1, 0.2, 0.6, 0.9]])
    a, b = aggregator(features, box), aggregator(tokens, box, hw=(7, 7))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="hw"):
        aggregator(tokens)


def test_normalised_boxes_map_to_feature_coordinates(features):
    out = PoolAggregator(5, grid=2)(features, torch.tensor([[1, 0.1, 0.2, 0.6, 0.9]], dtype=torch.float64))
    want = roi_align(features, torch.tensor([[1, 0.7, 1.4, 4.2, 6.3]], dtype=torch.float64), 2)
    torch.testing.assert_close(out.region_tokens, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.region_vector, want.mean(dim=(2, 3)), atol=ATOL, rtol=0)


def test_full_image_region_vector_equals_the_global_average(features):
    aggregator = PoolAggregator(5, grid=3, region_grid=1)
    out = aggregator(features, torch.tensor([[0, 0.0, 0.0, 1.0, 1.0], [1, 0.0, 0.0, 1.0, 1.0]]))
    assert out.region_tokens.shape == (2, 5, 1, 1)
    torch.testing.assert_close(out.region_vector, out.global_vector, atol=ATOL, rtol=0)


def test_attention_mode_shapes_gradients_and_position_awareness():
    torch.manual_seed(0)
    aggregator = PoolAggregator(8, grid=2, mode="attention", num_heads=2)
    fmap = torch.randn(3, 8, 4, 4, requires_grad=True)
    boxes = torch.tensor([[0, 0.0, 0.0, 0.5, 0.5], [2, 0.25, 0.25, 1.0, 1.0]])
    out = aggregator(fmap, boxes)
    assert out.prefix_tokens.shape == (3, 4, 8) and out.global_vector.shape == (3, 8)
    assert out.region_tokens.shape == (2, 8, 2, 2) and out.region_vector.shape == (2, 8)
    (out.prefix_tokens.sum() + out.global_vector.sum() + out.region_vector.sum()).backward()
    assert aggregator.queries.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in aggregator.attention.parameters())
    assert fmap.grad.abs().sum() > 0
    # the keys carry the position code: the same features at other positions pool differently
    flipped = aggregator(fmap.detach().flip(-1)).prefix_tokens
    assert (flipped - out.prefix_tokens.detach()).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mode": "max"}, "mode="), ({"grid": 0}, "grid="), ({"mode": "attention", "num_heads": 3}, "divisible")],
)
def test_bad_settings_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PoolAggregator(8, **kwargs)


def test_wrong_channel_count_raises_config_error(features):
    with pytest.raises(ConfigError, match=r"in_dim=6"):
        PoolAggregator(6)(features)


def test_on_the_default_vision_towers_feature_map():
    # the offline default's tower (random weights suffice here) gives [B, 1280, 7, 7] at 224 px: 49 -> 9 tokens
    from mmembed.models.smol_llava.tower import EfficientNetLite0

    tower = EfficientNetLite0(num_classes=0).eval()
    with torch.no_grad():
        fmap = tower.forward_features(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    boxes = torch.tensor([[0, 0.1, 0.25, 0.55, 0.9], [1, 0.0, 0.0, 1.0, 1.0]])  # normalised image coordinates
    out = PoolAggregator(1280, grid=3)(fmap.flatten(2).transpose(1, 2), boxes, hw=(7, 7))
    assert fmap.shape == (2, 1280, 7, 7)
    assert out.prefix_tokens.shape == (2, 9, 1280) and out.region_tokens.shape == (2, 1280, 3, 3)
    # the same box in the tower's 32-px cells: x * 7, y * 7
    torch.testing.assert_close(out.region_tokens[:1], roi_align(fmap, torch.tensor([[0, 0.7, 1.75, 3.85, 6.3]]), 3))
