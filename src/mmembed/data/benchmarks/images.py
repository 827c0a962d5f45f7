"""Opening benchmark and inference images: `mmembed.data.images.load_image` (the project's one image
loader: full decode, pixel limit, mode conversion) behind the OSError-style interface readers use."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from mmembed.data.images import load_image
from mmembed.errors import BadImageError

log = logging.getLogger(__name__)
ON_ERROR = ("skip", "raise")


class UnreadableImageError(OSError):
    """An image file is missing or cannot be decoded."""


def open_image(path: str | Path, on_error: str = "raise") -> Image.Image | None:
    """The image as RGB, or None (logged with its path) when unreadable and `on_error="skip"`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    try:
        return load_image(path, on_error="raise")
    except BadImageError as err:
        if on_error == "raise":
            raise UnreadableImageError(f"cannot read image {path}: {err.reason} (on_error=skip skips such files)") from err
        log.warning("skipping unreadable image %s: %s", path, err.reason)
        return None
