"""Inputs for `Embedder.encode`: validation, image loading, length-sorted batches, prefetching.

Batches are featurised (images decoded, prompts rendered, tokenised, pixels preprocessed) in a
background thread one batch ahead, so decoding overlaps with the model's forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from mmembed.data.images import load_image as _load

MODALITIES = ("texts", "images", "composed")


def pick_modality(texts, images, composed) -> tuple[str, list]:
    """The one modality given, as (name, list). Mixing them in one call is rejected."""
    given = {name: value for name, value in zip(MODALITIES, (texts, images, composed)) if value is not None}
    if len(given) != 1:
        what = "none" if not given else " and ".join(f"{n}=" for n in given)
        raise ValueError(
            f"encode() takes exactly one of texts=, images= or composed= per call (got {what}); the modalities "
            "are embedded with different prompts, so call encode() once per modality"
        )
    name, items = next(iter(given.items()))
    if isinstance(items, (str, bytes, Path, Image.Image)) or not isinstance(items, Sequence):
        raise TypeError(f"{name}= must be a list (got {type(items).__name__}); wrap a single item as [item]")
    items = list(items)
    for i, item in enumerate(items):
        _check_item(name, i, item)
    return name, items


def _check_item(name: str, i: int, item) -> None:
    if name == "texts" and not isinstance(item, str):
        raise TypeError(f"texts[{i}] is a {type(item).__name__}, not a str")
    if name == "images" and not isinstance(item, (str, Path, Image.Image)):
        raise TypeError(f"images[{i}] is a {type(item).__name__}; pass file paths or PIL images")
    if name == "composed":
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], str)):
            raise TypeError(f"composed[{i}] must be an (image, text) pair, got {item!r:.80}")
        _check_item("images", i, item[0])


def load_image(item) -> Image.Image:
    """An RGB PIL image from a path or a PIL image, through the project's one image loader (alpha on white,
    16-bit scaled, pixel limit); an unreadable or missing file raises `BadImageError` naming it."""
    return _load(item, on_error="raise")


def text_lengths(tokenizer, modality: str, items: list) -> list[int]:
    """Token counts of the text part (0 for plain images, whose prompts all have one length)."""
    if modality == "images":
        return [0] * len(items)
    strings = items if modality == "texts" else [pair[1] for pair in items]
    return [len(ids) for ids in tokenizer(strings, add_special_tokens=False)["input_ids"]]


def featurizer_of(embedder, modality: str, items: list, kind: str, category: str | None) -> Callable[[list[int]], dict]:
    """indices -> the model inputs of those items (run in the prefetch thread: images decode there)."""
    if modality == "texts":
        if kind != "text":
            raise ValueError(f"texts are embedded with the 'text' prompt, not {kind!r}")
        return lambda idx: embedder.featurize_text([items[i] for i in idx])
    if modality == "images":
        return lambda idx: embedder.featurize_images([load_image(items[i]) for i in idx], kind=kind, category=category)
    return lambda idx: embedder.featurize_images(
        [load_image(items[i][0]) for i in idx], [items[i][1] for i in idx], kind=kind, category=category
    )


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length, longest first (stable): batches of similar lengths, the largest first."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def prefetched(featurize: Callable[[list[int]], dict], plan: Sequence[list[int]], prefetch: bool = True) -> Iterator:
    """Yields (batch indices, featurize(batch)), preparing the next batch in a thread while the caller works."""
    if not prefetch:
        for idx in plan:
            yield idx, featurize(idx)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmembed-featurize") as pool:
        pending = pool.submit(featurize, plan[0]) if plan else None
        try:
            for n, idx in enumerate(plan):
                current = pending
                pending = pool.submit(featurize, plan[n + 1]) if n + 1 < len(plan) else None
                yield idx, current.result()
        finally:
            if pending is not None:
                pending.cancel()
