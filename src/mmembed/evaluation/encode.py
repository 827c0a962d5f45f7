"""Batched, progress-reporting encoding of texts, images and composed (image + text) inputs.

Texts are de-duplicated and sorted by length before batching (less padding); outputs come back in
input order. Images are opened lazily per batch; unreadable ones are skipped (and reported) or raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmembed.data.images import load_image


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress, total=len(starts), dynamic_ncols=True)


@torch.inference_mode()
def encode_texts(embedder, texts: Sequence[str], batch_size: int = 32, desc: str = "texts", progress: bool = True):
    """[len(texts), D] embeddings; each distinct string is embedded once."""
    from mmembed.inference.embedder import Embedder

    if isinstance(embedder, Embedder):  # global length sort + shared-prefix cache
        return embedder.encode(texts=list(texts), batch_size=batch_size, progress=progress)
    unique = list(dict.fromkeys(texts))
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
    out: list[torch.Tensor | None] = [None] * len(unique)
    for start in _batches(len(order), batch_size, desc, progress):
        idx = order[start : start + batch_size]
        emb = embedder.encode_text([unique[i] for i in idx]).cpu()
        for i, row in zip(idx, emb):
            out[i] = row
    if not unique:
        return torch.zeros(0, 0)
    position = {t: i for i, t in enumerate(unique)}
    table = torch.stack(out)
    return table[torch.tensor([position[t] for t in texts], dtype=torch.long)]


@torch.inference_mode()
def _encode_loaded(
    encode: Callable[[list, list[int]], torch.Tensor],
    paths: Sequence[str | Path],
    batch_size: int,
    desc: str,
    on_error: str,
    progress: bool,
) -> tuple[torch.Tensor, list[int], list[str]]:
    embs, ok, failed = [], [], []
    for start in _batches(len(paths), batch_size, desc, progress):
        images, idx = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            img = load_image(paths[i], on_error=on_error)
            if img is None:
                failed.append(str(paths[i]))
            else:
                images.append(img)
                idx.append(i)
        if images:
            embs.append(encode(images, idx).cpu())
            ok.extend(idx)
    return (torch.cat(embs) if embs else torch.zeros(0, 0)), ok, failed


def encode_images(
    embedder,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    kind: str = "image",
    category: str | None = None,
    on_error: str = "skip",
    desc: str = "images",
    progress: bool = True,
):
    """(embeddings of the readable images, their indices into `paths`, unreadable paths)."""
    return _encode_loaded(
        lambda images, _: embedder.encode_image(images, kind=kind, category=category),
        paths, batch_size, desc, on_error, progress,
    )


def encode_composed(
    embedder,
    paths: Sequence[str | Path],
    texts: Sequence[str],
    batch_size: int = 16,
    kind: str = "cir_query",
    category: str | None = None,
    on_error: str = "skip",
    desc: str = "queries",
    progress: bool = True,
):
    """Composed queries (reference image i with text i): (embeddings, indices kept, unreadable paths)."""
    if len(paths) != len(texts):
        raise ValueError(f"{len(paths)} images but {len(texts)} texts")
    return _encode_loaded(
        lambda images, idx: embedder.encode_composed(images, [texts[i] for i in idx], kind=kind, category=category),
        paths, batch_size, desc, on_error, progress,
    )


def encode_rendered_texts(
    embedder, texts: Sequence[str], batch_size: int = 16, desc: str = "texts as images", progress: bool = True, **render
):
    """E5-V's I2I setting: each text drawn on a white canvas, then embedded as an image."""
    from mmembed.evaluation.text_images import render_text_image

    unique = list(dict.fromkeys(texts))
    embs = []
    with torch.inference_mode():
        for start in _batches(len(unique), batch_size, desc, progress):
            images = [render_text_image(t, **render) for t in unique[start : start + batch_size]]
            embs.append(embedder.encode_image(images, kind="image").cpu())
    position = {t: i for i, t in enumerate(unique)}
    return torch.cat(embs)[torch.tensor([position[t] for t in texts], dtype=torch.long)]
