"""The project's one image loader: any file or PIL image -> a fully decoded RGB PIL image, or a clear error.

`load_image(src, on_error, max_pixels)` follows the project's bad-input policy (`mmembed.errors`):
- `on_error="raise"`: `BadImageError` naming the file and the reason;
- `on_error="skip"`: returns None, logs a warning and counts the skip in the `SkipCounter` passed in.

What counts as bad: a missing or empty file, bytes no allowed decoder recognises, a corrupt or
*truncated* file (decoding is forced with `.load()`, and `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` must stay
False, so half an image never loads silently), more than `max_pixels` pixels (decompression bombs,
checked from the header before any pixel is decoded), and modes with no RGB meaning.

Colour handling (all documented, all tested):
- RGB as is; L / 1 / CMYK / YCbCr through PIL's conversion;
- alpha (RGBA, LA, PA, RGBa, La, and P with a transparency entry) is composited on **white**, so
  transparent backgrounds look like the page they are usually shown on, not black;
- 16-bit greyscale (`I;16*`) is scaled to 8 bits (value * 255 / 65535), not clipped at 255; 32-bit
  integer (`I`) images are read as 16-bit when a value exceeds 255, else as 8-bit; float (`F`)
  images as [0, 1] when their maximum is <= 1, else clipped to [0, 255].

Only common raster formats are decoded (`FORMATS`): PIL's other plugins (EPS runs Ghostscript, for
example) are never reached by untrusted files. No Lightning or Hydra here (layering rule).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from mmembed.errors import BadImageError, SkipCounter, check_on_error

log = logging.getLogger(__name__)

# PIL's own warning threshold (about 89.5 MPixel, 0.27 GB as RGB). PIL raises DecompressionBombError
# by itself above twice its Image.MAX_IMAGE_PIXELS: a max_pixels beyond that also needs PIL's limit raised.
DEFAULT_MAX_PIXELS = 89_478_485
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")  # JPEG covers MPO (multi-picture JPEG)
# File name endings the project treats as images when it lists a folder (compare with `suffix.lower()`).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".ico")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

ImageSource = str | os.PathLike | bytes | Image.Image


def load_image(
    src: ImageSource,
    on_error: str = "raise",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    skips: SkipCounter | None = None,
    formats: tuple[str, ...] = FORMATS,
) -> Image.Image | None:
    """`src` (a path, raw file bytes, or a PIL image) as a fully decoded RGB image; None when skipped."""
    check_on_error(on_error)
    name = _describe(src)
    try:
        return _load(src, max_pixels, formats)
    except BadImageError as err:
        if on_error == "raise":
            raise
        log.warning("skipping image %s: %s", name, err.reason)
        if skips is not None:
            skips.add(name, err.reason.split(":")[0])
        return None


def _describe(src: ImageSource) -> str:
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or f"<PIL {src.mode} {src.size[0]}x{src.size[1]}>"
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    return str(src)


def _load(src: ImageSource, max_pixels: int | None, formats: tuple[str, ...]) -> Image.Image:
    name = _describe(src)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched PIL to pad truncated files with grey: refuse rather than train on half images.
        raise BadImageError(name, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; set it back to False")
    if isinstance(src, Image.Image):
        _check_pixels(name, src.size, max_pixels)
        try:
            src.load()
            return to_rgb(src)
        except (BadImageError, MemoryError):  # out of memory is the machine's problem, not the image's
            raise
        except Exception as err:  # a lazily opened image can still fail to decode here
            raise BadImageError(name, f"cannot decode: {type(err).__name__}: {err}") from err
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise BadImageError(name, "empty: zero bytes")
        fp = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise BadImageError(name, "missing: no such file" if not path.exists() else "missing: not a file")
        if path.stat().st_size == 0:
            raise BadImageError(name, "empty: zero-byte file")
        fp = path
    try:
        with Image.open(fp, formats=list(formats)) as img:
            _check_pixels(name, img.size, max_pixels)
            img.load()  # decode every pixel now: a truncated or corrupt file fails here, not later
            return to_rgb(img)
    except (BadImageError, MemoryError):  # out of memory is the machine's problem, not the image's
        raise
    except Image.DecompressionBombError as err:
        raise BadImageError(name, f"too large: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise BadImageError(name, f"unreadable: not an image in an allowed format {formats}") from err
    except Exception as err:  # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImageError(name, f"corrupt: {type(err).__name__}: {err}") from err


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImageError(name, f"empty: {width}x{height} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            name, f"too large: {width}x{height} = {width * height} pixels > max_pixels={max_pixels} (decompression bomb?)"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded PIL image as 8-bit RGB (alpha composited on white; 16-bit and float scaled, not clipped)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise BadImageError(_describe(img), f"unsupported mode: {mode} ({err})") from err


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = arr.astype(np.float64)
    if mode == "F":
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale, nan=0.0, posinf=255.0, neginf=0.0)
    elif mode.startswith("I;16") or arr.max(initial=0) > 255:
        arr = arr * (255.0 / 65535.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
