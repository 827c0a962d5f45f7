"""Captions rendered as images (E5-V's I2I setting)."""

from __future__ import annotations

from mmembed.evaluation.text_images import default_font, render_text_image, wrap_text


def test_render_canvas_and_ink():
    img = render_text_image("a dog runs on the beach")
    assert img.size == (800, 400) and img.mode == "RGB"
    assert img.getpixel((799, 399)) == (255, 255, 255)  # white canvas
    assert min(img.convert("L").getdata()) < 50  # black text drawn
    assert list(render_text_image("x").getdata()) != list(render_text_image("y").getdata())
    blank = render_text_image("")
    assert set(blank.getdata()) == {(255, 255, 255)}


def test_wrap_by_pixel_width():
    font = default_font(40)
    text = " ".join(["word"] * 40)
    lines = wrap_text(text, font, 760)
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(font.getlength(line) <= 760 for line in lines)
    assert wrap_text("supercalifragilistic" * 5, font, 100) == ["supercalifragilistic" * 5]
