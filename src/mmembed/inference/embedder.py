"""`Embedder`: fast batch inference on top of `MLLMEmbedder` (same prompts, same pooling).

    from mmembed import Embedder
    emb = Embedder.from_pretrained("default", adapter="logs/run/adapters/last")
    vectors = emb.encode(texts=["a dog running", "a red car"])            # [2, D], L2-normalised
    vectors = emb.encode(images=["cat.jpg", pil_image], to_numpy=True)     # numpy [2, D]
    vectors = emb.encode(composed=[("dress.jpg", "make it red")])           # CIR-style query
    small = Embedder.from_pretrained("default", adapter=..., truncate_dim=128)  # Matryoshka: [N, 128]

What makes it faster than calling the model per batch: only the decoder body runs (no vocabulary
logits, no per-layer hidden states); texts are sorted by token length so batches carry little
padding (results come back in input order, duplicates embedded once); the prompt prefix every input
shares (the chat template's system turn) is computed once and reused (see prefix.py); images are
decoded and preprocessed in a background thread one batch ahead; conv vision towers run channels-last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmembed.inference.chunked_forward import channels_last_vision, forward_in_chunks
from mmembed.inference.inputs import batches, featurizer_of, length_order, pick_modality, prefetched, text_lengths
from mmembed.inference.prefix import PrefixCache, build_prefix_cache
from mmembed.inference.truncation import check_truncate_dim, truncate
from mmembed.models.backbones import DEFAULT_MODEL, unwrap
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.prompts import PromptConfig

log = logging.getLogger(__name__)

DEFAULT_KIND = {"texts": "text", "images": "image", "composed": "cir_query"}
AUTO_PROGRESS_ITEMS = 512  # progress=None shows a bar from this many inputs on


class Embedder:
    """Encodes texts, images or (image, text) pairs into L2-normalised vectors of one space."""

    def __init__(
        self,
        embedder: MLLMEmbedder,
        prefix_cache: str | bool = "auto",
        prefetch: bool = True,
        channels_last: bool = True,
        image_chunk: int = 8,
        truncate_dim: int | None = None,
    ):
        self.embedder = embedder.eval()
        self.backbone = embedder.backbone
        # Every vector keeps its first truncate_dim coordinates, L2-renormalised (mmembed.inference.truncation).
        self.truncate_dim = check_truncate_dim(truncate_dim, self.model_dim)
        self.prefetch = prefetch
        self.image_chunk = image_chunk
        if channels_last:
            channels_last_vision(self.backbone.model)
        self.prefix: PrefixCache | None = build_prefix_cache(embedder, prefix_cache)

    @classmethod
    def from_pretrained(
        cls,
        model_or_folder: str | Path = DEFAULT_MODEL,
        adapter: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "auto",
        merge_adapter: bool = True,
        prompts: PromptConfig | Mapping | None = None,
        text_only: bool = False,
        trust_remote_code: bool = False,
        pooler=None,
        vision_dtype: str | None = None,
        **options,
    ) -> Embedder:
        """Load a model ("default", a hub id or a folder), optionally with a LoRA adapter folder.

        merge_adapter folds the adapter into the weights (faster; same vectors up to rounding).
        prompts: a PromptConfig or mapping of its fields; None uses the mmembed_prompts.json saved with
        the adapter (by training) or the model folder (by `export_merged`) if there is one, else E5-V's
        prompts (the model factory's precedence, mmembed.models.factory). pooler: a mmembed.models.pooling
        pooler (None: last token). dtype "auto": on a CPU with native bf16 (mmembed.hardware), bfloat16 with
        the vision tower and projector in float32 (speed and cosine to float32:
        experiments/README.md#encoding-throughput-perfencode_throughputpy-2026-12-02), else float32; or
        "float32" / "bfloat16" / "float16". vision_dtype: the vision tower and projector's own precision
        beside `dtype` (None: float32 under "auto", else `dtype`). options go to __init__ (prefix_cache,
        prefetch, channels_last, image_chunk, truncate_dim: keep each vector's first d coordinates,
        L2-renormalised, as for a Matryoshka-trained model; 1..model_dim, None for all).
        """
        if dtype == "auto":
            from mmembed.hardware import cpu_inference_dtype

            dtype = cpu_inference_dtype() if torch.device(device).type == "cpu" else "float32"
            vision_dtype = vision_dtype or "float32"
        spec = ModelSpec(
            name_or_path=str(model_or_folder), dtype=dtype, vision_dtype=vision_dtype, text_only=text_only,
            trust_remote_code=trust_remote_code,
            adapter=str(adapter) if adapter is not None else None, merge_adapter=merge_adapter,
            prompts=as_prompt_config(prompts), pooler=pooler,
        )
        embedder = build_embedder(spec)
        embedder.model.to(device).eval()
        return cls(embedder, **options)

    # ---- facts about the model ----
    @property
    def model_dim(self) -> int:
        """The model's own embedding size (the LLM's hidden size)."""
        return int(unwrap(self.backbone.model).config.get_text_config().hidden_size)

    @property
    def dim(self) -> int:
        """The size of the vectors `encode` returns: truncate_dim when set, else model_dim."""
        return self.truncate_dim or self.model_dim

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    @property
    def modalities(self) -> frozenset[str]:
        """What the model encodes: {"text"} for a text-only load, else {"text", "image"}."""
        return self.embedder.modalities

    @property
    def prompts(self) -> PromptConfig:
        return self.embedder.renderer.config

    def rendered_prompts(self) -> dict[str, str]:
        """The exact template strings this embedder feeds the model (placeholders left in)."""
        renderer, out = self.embedder.renderer, {}
        for kind in ("text", "image", "cir_query", "cir_target"):
            try:
                out[kind] = renderer.render(kind, "<sent>")
            except ValueError:  # e.g. no image token on a text-only model
                continue
        return out

    # ---- encoding ----
    def encode(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence | None = None,
        composed: Sequence[tuple] | None = None,
        batch_size: int = 32,
        to_numpy: bool = False,
        progress: bool | None = None,
        kind: str | None = None,
        category: str | None = None,
        truncate_dim: int | None = None,
    ) -> torch.Tensor | np.ndarray:
        """[N, D] float32 L2-normalised embeddings (CPU tensor, or numpy with to_numpy), in input order.

        Exactly one of texts (strings), images (paths or PIL images) or composed ((image, text) pairs)
        per call. kind picks the prompt (defaults: "text", "image", "cir_query"); category fills
        FashionIQ prompts. progress: True/False, or None for a bar from 512 inputs on. truncate_dim: this
        call's size (first coordinates, L2-renormalised), instead of the embedder's own `truncate_dim`.
        """
        size = check_truncate_dim(truncate_dim, self.model_dim) if truncate_dim is not None else self.truncate_dim
        modality, items = pick_modality(texts, images, composed)
        kind = kind or DEFAULT_KIND[modality]
        unique, positions = items, None
        if modality == "texts":  # each distinct string once
            unique = list(dict.fromkeys(items))
            slot = {text: i for i, text in enumerate(unique)}
            positions = [slot[text] for text in items]
        out = torch.zeros(len(unique), self.model_dim)
        if unique:
            plan = batches(length_order(text_lengths(self.backbone.tokenizer, modality, unique)), batch_size)
            show = len(unique) >= AUTO_PROGRESS_ITEMS if progress is None else progress
            featurize = featurizer_of(self.embedder, modality, unique, kind, category)
            unit = {"texts": "text", "images": "image", "composed": "pair"}[modality]
            with torch.inference_mode(), tqdm(total=len(unique), unit=unit, disable=not show) as bar:
                for idx, inputs in prefetched(featurize, plan, self.prefetch):
                    out[idx] = forward_in_chunks(self.embedder, self.prefix, inputs, self.image_chunk).to("cpu", torch.float32)
                    bar.update(len(idx))
        if positions is not None:
            out = out[torch.tensor(positions, dtype=torch.long)] if positions else out
        out = truncate(out, size)
        return out.numpy() if to_numpy else out

    # ---- the MLLMEmbedder interface, so the evaluation runner gets the fast path too ----
    @property
    def renderer(self):
        return self.embedder.renderer

    def eval(self) -> Embedder:
        return self

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts=list(texts), batch_size=max(len(texts), 1), progress=False)

    def encode_image(self, images: Sequence, kind: str = "image", category: str | None = None) -> torch.Tensor:
        return self.encode(images=list(images), kind=kind, category=category, batch_size=max(len(images), 1), progress=False)

    def encode_composed(
        self, images: Sequence, texts: Sequence[str], kind: str = "cir_query", category: str | None = None
    ) -> torch.Tensor:
        pairs = list(zip(images, texts, strict=True))
        return self.encode(composed=pairs, kind=kind, category=category, batch_size=max(len(pairs), 1), progress=False)

    def __repr__(self) -> str:
        return (
            f"Embedder({self.backbone.name_or_path!r}, family={self.backbone.family}, dim={self.dim}"
            f"{f' (of {self.model_dim})' if self.truncate_dim else ''}, "
            f"device={self.device}, prefix_cache={len(self.prefix) if self.prefix else 0} tokens)"
        )


def as_prompt_config(prompts: PromptConfig | Mapping | None) -> PromptConfig | None:
    if prompts is None or isinstance(prompts, PromptConfig):
        return prompts
    return PromptConfig.from_mapping(prompts)
