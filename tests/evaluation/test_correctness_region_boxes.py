"""Region boxes (mmembed.models.mmgem.region_boxes.processed_box) against the default model's real image
processor (CLIP: shortest edge -> 224 with the long edge truncated to an integer, centre crop 224 x 224 at
an integer offset), not a stand-in with the same settings.

Each box is painted white on a black image of its size; the real processor's output shows where the box's
pixels land (the bicubic edge blurs by under a pixel). processed_box works in exact (float) geometry, the
processor in integers: they may differ by a fraction of a pixel, never by one (1/224 of the side; the
feature map's cells are 32 px).

By hand, image 500 x 375 (landscape): the processor resizes to 298 x 224 (int(224 * 500 / 375) = 298) and
crops columns 37..261 ((298 - 224) // 2 = 37); processed_box's float geometry scales by 224 / 375 and
crops from 37.33. Box (100, 50, 300, 200): x1 = 100 * 224/375 - 37.33 = 22.40, x2 = 141.87, y1 = 50 * 224/375
= 29.87, y2 = 119.47 (the processor: columns 22.6 .. 141.8). Portrait 375 x 500: resized to 224 x 298, rows
from 37.33 cropped; box (40, 10, 300, 480): its top lies in the cropped strip (10 * 0.597 < 37.33) and is
clipped to 0, its bottom (286.7 - 37.33 = 249.4) to 224; x1 = 40 * 224/375 = 23.89, x2 = 179.2.
333 x 500 (odd width): scale 224/333, rows cropped from (336.34 - 224) / 2 = 56.17; box (0, 200, 333, 260):
y1 = 200 * 224/333 - 56.17 = 78.37, y2 = 118.73, full width.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import AutoProcessor

from mmembed.models.mmgem.region_boxes import processed_box

CASES = [  # (width, height), box in original pixels, hand-computed box in processed pixels (224 x 224)
    ((500, 375), (100, 50, 300, 200), (22.40, 29.867, 141.867, 119.467)),
    ((375, 500), (40, 10, 300, 480), (23.893, 0.0, 179.2, 224.0)),
    ((333, 500), (0, 200, 333, 260), (0.0, 78.366, 224.0, 118.727)),
]


@pytest.fixture(scope="module")
def image_processor(smol_tokenizer_dir):
    processor = AutoProcessor.from_pretrained(smol_tokenizer_dir).image_processor
    assert processor.size["shortest_edge"] == 224 and processor.do_center_crop  # the default model's geometry
    return processor


def _where_the_processor_puts(box, size, image_processor) -> tuple[int, int, int, int]:
    """Pixel bounds (x1, y1, x2, y2) of the painted box in the processor's 224 x 224 output."""
    image = Image.new("RGB", size, (0, 0, 0))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    pixels = np.asarray(image_processor(images=image, return_tensors="np")["pixel_values"][0][0])
    assert pixels.shape == (224, 224)
    cols, rows = np.where((pixels > 0).any(axis=0))[0], np.where((pixels > 0).any(axis=1))[0]  # normalised: white > 0
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.mark.parametrize(("size", "box", "by_hand"), CASES)
def test_box_mapping_matches_the_hand_computation(size, box, by_hand, image_processor):
    got = [v * 224 for v in processed_box(box, size, image_processor)]
    assert got == pytest.approx(by_hand, abs=1e-3)


@pytest.mark.parametrize(("size", "box", "by_hand"), CASES)
def test_box_mapping_lands_where_the_real_processor_puts_the_pixels(size, box, by_hand, image_processor):
    got = [v * 224 for v in processed_box(box, size, image_processor)]
    seen = _where_the_processor_puts(box, size, image_processor)
    assert max(abs(a - b) for a, b in zip(got, seen)) < 1.0, (got, seen)


def test_a_shifted_crop_would_be_caught(image_processor):
    """The check above is sharp enough: ignoring the centre crop's offset misses by the whole 37 px strip."""
    size, box, _ = CASES[0]
    seen = _where_the_processor_puts(box, size, image_processor)
    uncropped_x1 = box[0] * 224 / 375  # scaled but not shifted by the crop
    assert abs(uncropped_x1 - seen[0]) > 30
