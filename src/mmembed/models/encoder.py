"""What evaluation asks of any embedder: the `Encoder` protocol and its optional capabilities.

Every embedder (mmembed's `Embedder`, the raw `MLLMEmbedder`, MM-GEM's, the text and label-text baselines)
encodes texts; most encode images; some encode composed image + text queries or boxed regions. Evaluation
asks `capabilities(embedder)` instead of probing attributes, so an embedder declares what it can do in one
place (its `modalities` / method set) and a benchmark refuses a model it cannot run with one clear line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoder(Protocol):
    """Texts -> [N, D] L2-normalised embeddings; the one method every embedder has."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    def encode_image(self, images: Sequence, kind: str = "image", category: str | None = None) -> torch.Tensor: ...


@runtime_checkable
class ComposedEncoder(ImageEncoder, Protocol):
    """Image + text edits (CIRR, FashionIQ): one vector per (reference image, modification text)."""

    def encode_composed(self, images: Sequence, texts: Sequence[str], kind: str = "composed",
                        category: str | None = None) -> torch.Tensor: ...


@runtime_checkable
class RegionEncoder(ImageEncoder, Protocol):
    """Boxed regions of images as vectors in the text space (MM-GEM's RoI-pooled region vectors)."""

    def embed_regions(self, images, boxes) -> torch.Tensor: ...


CAPABILITIES = {"text": Encoder, "image": ImageEncoder, "composed": ComposedEncoder, "regions": RegionEncoder}


def unwrap(embedder):
    """The model-level embedder behind a wrapper (mmembed.inference.Embedder keeps it as `.embedder`)."""
    return getattr(embedder, "embedder", embedder)


def capabilities(embedder) -> frozenset[str]:
    """What `embedder` (or the model-level embedder it wraps) can encode: a subset of CAPABILITIES' keys.

    An embedder may narrow what its methods suggest with a `modalities` attribute (a text-only model built
    from an MLLM class keeps `encode_image` but has no vision tower)."""
    found = {name for name, proto in CAPABILITIES.items() if isinstance(embedder, proto)}
    inner = unwrap(embedder)
    if inner is not embedder:
        found |= {name for name, proto in CAPABILITIES.items() if isinstance(inner, proto)}
    declared = getattr(embedder, "modalities", None) or getattr(inner, "modalities", None)
    if declared is not None:
        found -= set() if "image" in declared else {"image", "composed", "regions"}
    return frozenset(found)
