"""Pictures of retrieval results, drawn with PIL (no Lightning, no TensorBoard): a grid with one row per caption
query (the caption as a header, then its top-k images as thumbnails, the correct image in a green frame, the others
in grey), and the square thumbnails TensorBoard's projector uses as sprites.

Layout of `render_retrieval_grid` (pixels; tile = thumb + 2 * BORDER): a PAD margin all round, then per row a
header of HEADER_LINES text lines, k tiles GAP apart, and one line under each tile ("#rank  score"); rows are PAD
apart. Width = 2 * PAD + k * tile + (k - 1) * GAP; height = PAD + n_rows * (row_height + PAD).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmembed.data.images import load_image

PAD, GAP, BORDER, LINE_H, HEADER_LINES = 8, 8, 4, 16, 3
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)
CORRECT, WRONG, MISSED = (0, 170, 60), (170, 170, 170), (200, 40, 40)  # frames; MISSED: "correct not in top k"
EMPTY_TILE, LETTERBOX, TEXT_TILE = (90, 90, 90), (235, 235, 235), (70, 110, 200)


@dataclass(frozen=True)
class RetrievalRow:
    """One query: its text, its top-k images best first (paths, PIL images, or None for unreadable), their
    similarities, which of them is correct, and the 1-based rank of the correct image among all candidates."""

    query: str
    images: Sequence
    scores: Sequence[float]
    correct: Sequence[bool]
    correct_rank: int | None = None


def top_k_rows(queries: Sequence[str], query_emb: torch.Tensor, image_emb: torch.Tensor, images: Sequence,
               correct_image: Sequence[int], k: int = 5) -> list[RetrievalRow]:
    """Each query's k most cosine-similar images (rows of `image_emb`, `images` their sources) and where its correct
    image (`correct_image[q]`, a row of `image_emb`) ranks: the ranking the retrieval metrics use."""
    sims = torch.nn.functional.normalize(query_emb.float(), dim=-1) @ torch.nn.functional.normalize(
        image_emb.float(), dim=-1).T
    k = min(k, sims.shape[1])
    rows = []
    for q, text in enumerate(queries):
        order = torch.argsort(sims[q], descending=True, stable=True).tolist()
        top = order[:k]
        rows.append(RetrievalRow(text, [images[i] for i in top], [float(sims[q, i]) for i in top],
                                 [i == correct_image[q] for i in top], order.index(correct_image[q]) + 1))
    return rows


@lru_cache(maxsize=4)
def _font(size: int = 13):
    return ImageFont.load_default(size=size)


def row_height(thumb: int) -> int:
    return HEADER_LINES * LINE_H + thumb + 2 * BORDER + LINE_H


def grid_shape(n_rows: int, k: int, thumb: int) -> tuple[int, int, int]:
    tile = thumb + 2 * BORDER
    return PAD + n_rows * (row_height(thumb) + PAD), 2 * PAD + k * tile + (k - 1) * GAP, 3


def thumbnail(src, size: int, square: bool = False) -> Image.Image:
    """`src` (path or PIL image) in a size x size RGB tile: whole and centred (square=False) or centre-cropped to
    fill it (square=True, for sprites); an unreadable image gives a dark tile marked "?"."""
    image = load_image(src, on_error="skip") if src is not None else None
    tile = Image.new("RGB", (size, size), EMPTY_TILE)
    if image is None:
        ImageDraw.Draw(tile).text((size // 2, size // 2), "?", fill=BACKGROUND, font=_font(), anchor="mm")
        return tile
    if square:
        return ImageOps.fit(image, (size, size))
    image, tile = ImageOps.contain(image, (size, size)), Image.new("RGB", (size, size), LETTERBOX)
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def text_tile(size: int) -> Image.Image:
    """The projector's sprite for a caption: a blue tile marked "T" (images show their thumbnails)."""
    tile = Image.new("RGB", (size, size), TEXT_TILE)
    ImageDraw.Draw(tile).text((size // 2, size // 2), "T", fill=BACKGROUND, font=_font(max(size // 2, 8)), anchor="mm")
    return tile


def _wrap(text: str, width_px: int, lines: int) -> list[str]:
    font = _font()
    chars = max(int(width_px / max(font.getlength("x"), 1.0)), 8)
    out = textwrap.wrap(" ".join(text.split()), chars) or [""]
    while out and font.getlength(out[0]) > width_px and chars > 8:  # wider glyphs than "x": re-wrap narrower
        chars -= 4
        out = textwrap.wrap(" ".join(text.split()), chars) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: max(len(out[-1]) - 1, 0)] + "…"
    return out


def render_retrieval_grid(rows: Sequence[RetrievalRow], thumb: int = 96) -> np.ndarray:
    """The rows as one HWC uint8 picture (shape `grid_shape(len(rows), k, thumb)`, k = the longest row)."""
    k = max((len(r.images) for r in rows), default=0)
    height, width, _ = grid_shape(len(rows), max(k, 1), thumb)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw, font, tile = ImageDraw.Draw(canvas), _font(), thumb + 2 * BORDER
    for r, row in enumerate(rows):
        top = PAD + r * (row_height(thumb) + PAD)
        caption = _wrap(f'{r + 1}. "{row.query}"', width - 2 * PAD, HEADER_LINES - 1)
        for i, line in enumerate(caption):
            draw.text((PAD, top + i * LINE_H), line, fill=INK, font=font)
        if row.correct_rank is not None:
            hit = row.correct_rank <= len(row.images)
            note = f"correct image: rank {row.correct_rank}" + ("" if hit else f" (not in the top {len(row.images)})")
            draw.text((PAD, top + (HEADER_LINES - 1) * LINE_H), note, fill=CORRECT if hit else MISSED, font=font)
        y = top + HEADER_LINES * LINE_H
        for j, (src, score, ok) in enumerate(zip(row.images, row.scores, row.correct)):
            x = PAD + j * (tile + GAP)
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), fill=CORRECT if ok else WRONG)
            canvas.paste(thumbnail(src, thumb), (x + BORDER, y + BORDER))
            draw.text((x, y + tile + 1), f"#{j + 1}  {score:.3f}", fill=CORRECT if ok else INK, font=font)
    return np.asarray(canvas, dtype=np.uint8)
