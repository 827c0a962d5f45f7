"""Boxes drawn on an original image -> normalised boxes of what the vision tower sees after preprocessing.

An image processor resizes (and often centre-crops) every image before the tower; RoI pooling reads the
tower's feature map, which tiles the *processed* square. A box given in the original image's pixels
must go through the same geometry: CLIP-style processors resize the shortest edge to S and crop the
centre S x S (the default model's), others resize straight to H x W. Parts of a box the crop cut off
are clipped to the visible square; a box wholly outside it, or one with no area, is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmembed.errors import DataConfigError


def _size(value, keys):
    if isinstance(value, int):
        return value, value
    get = value.get if isinstance(value, dict) else (lambda k: getattr(value, k, None))
    found = [get(k) for k in keys]
    return tuple(found) if all(found) else None


def processed_box(box: Sequence[float], image_size: tuple[int, int], image_processor) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in pixels of an image of `image_size` = (width, height) -> the same region in
    normalised coordinates of the processed image ((0, 0) top-left, (1, 1) bottom-right), clipped to it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = image_size
    if not (x2 > x1 and y2 > y1):
        raise DataConfigError(f"box {list(box)} needs x2 > x1 and y2 > y1")
    size = getattr(image_processor, "size", None) or {}
    shortest = _size(size, ("shortest_edge",))
    crop = _size(getattr(image_processor, "crop_size", None) or {}, ("width", "height"))
    if getattr(image_processor, "do_resize", True) and shortest:
        scale = shortest[0] / min(width, height)
        out_w, out_h = width * scale, height * scale
    elif getattr(image_processor, "do_resize", True) and _size(size, ("width", "height")):
        return _clip((x1 / width, y1 / height, x2 / width, y2 / height), box)
    else:
        scale, out_w, out_h = 1.0, float(width), float(height)
    if getattr(image_processor, "do_center_crop", False) and crop:
        crop_w, crop_h = crop
        left, top = (out_w - crop_w) / 2, (out_h - crop_h) / 2
    else:
        crop_w, crop_h, left, top = out_w, out_h, 0.0, 0.0
    return _clip(((x1 * scale - left) / crop_w, (y1 * scale - top) / crop_h,
                  (x2 * scale - left) / crop_w, (y2 * scale - top) / crop_h), box)


def _clip(norm: tuple[float, float, float, float], box) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in norm)
    if not (x2 > x1 and y2 > y1):
        raise DataConfigError(f"box {list(box)} lies outside the part of the image the model sees")
    return x1, y1, x2, y2
