"""Draw a text as an image (E5-V's image-to-image setting): black wrapped text on a white 800x400 canvas.

The font is DejaVu Sans as bundled with matplotlib (a declared dependency), so rendering is identical
on every machine.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont


@lru_cache(maxsize=8)
def default_font(size: int = 40) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    return ImageFont.truetype(path, size)


def wrap_text(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap by rendered pixel width (a word wider than the line gets a line of its own)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > max_width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def render_text_image(
    text: str, width: int = 800, height: int = 400, font_size: int = 40, margin: int = 20, line_spacing: float = 1.2
) -> Image.Image:
    font = default_font(font_size)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = margin
    for line in wrap_text(text, font, width - 2 * margin):
        if y + font_size > height - margin / 2:
            break  # text beyond the canvas is cut, as a fixed-size screenshot would
        draw.text((margin, y), line, fill="black", font=font)
        y += int(font_size * line_spacing)
    return image
