"""Opening benchmark images: RGB PIL images, with unreadable files reported by path (skipped or raised)."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)
ON_ERROR = ("skip", "raise")


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded."""


def open_image(path: str | Path, on_error: str = "raise") -> Image.Image | None:
    """The image as RGB, or None (logged with its path) when unreadable and `on_error="skip"`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        if on_error == "raise":
            raise UnreadableImageError(f"cannot read image {path}: {err} (on_error=skip skips such files)") from err
        log.warning("skipping unreadable image %s: %s", path, err)
        return None
