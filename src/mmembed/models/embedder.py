"""The embedder: prompt -> model body -> pooler (E5-V's last token by default) -> L2 normalise.

It calls the decoder body (`model.model`), never the LM head: no vocabulary logits and no stack
of every layer's hidden states are computed, only the final hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.models.backbones import Backbone
from mmembed.models.featurizer import Featurizer
from mmembed.models.pooling import LastTokenPooler, Pooler
from mmembed.models.prompts import PromptConfig, PromptRenderer


class MLLMEmbedder(nn.Module):
    """Turns texts, images and image+text edits into L2-normalised vectors in one space."""

    def __init__(
        self,
        backbone: Backbone,
        prompts: PromptConfig | None = None,
        pooler: Pooler | None = None,
        featurizer: Featurizer | None = None,
    ):
        super().__init__()
        # Bound to this tokenizer (a TokenPooler looks its token's id up there); E5-V's last token by default.
        self.pooler = (LastTokenPooler() if pooler is None else pooler).bind(backbone.tokenizer)
        self.model = backbone.model  # registered, so LoRA/optimisers/checkpoints see it
        # Not nn.Modules: kept outside the module tree (a plain attribute dict entry).
        self.__dict__["backbone"] = backbone
        if featurizer is None:
            featurizer = Featurizer(backbone.processor, backbone.tokenizer, backbone.family, backbone.image_token,
                                    prompts, backbone.name_or_path, supports_images=backbone.supports_images)
        elif prompts is not None:
            featurizer = featurizer.with_prompts(prompts)
        if not backbone.supports_images and featurizer.supports_images:
            featurizer = featurizer.without_images()
        self.featurizer = featurizer

    @property
    def renderer(self) -> PromptRenderer:
        return self.featurizer.renderer

    @property
    def modalities(self) -> frozenset[str]:
        """What this embedder encodes (models/encoder.py's `capabilities` reads it): texts always, images only
        with a vision tower loaded (not a causal LM, not model.text_only=true)."""
        images = self.featurizer.supports_images and self.backbone.supports_images
        return frozenset({"text", "image"} if images else {"text"})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- featurisation: strings and images -> model inputs (the featurizer's, which training collators use) ----
    def featurize_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.featurizer.featurize_text(texts)

    def featurize_images(
        self, images: Sequence, texts: Sequence[str] | None = None, kind: str = "image", category: str | None = None
    ) -> dict[str, torch.Tensor]:
        return self.featurizer.featurize_images(images, texts, kind=kind, category=category)

    # ---- embedding ----
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs (from `featurize_*`) -> [B, D] L2-normalised embeddings."""
        device = self.device
        inputs = trim_padding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        hidden = self.backbone.body(**inputs, use_cache=False).last_hidden_state
        pooled = self.pooler(hidden, inputs["attention_mask"], inputs.get("input_ids"))
        return F.normalize(pooled.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self(**self.featurize_text(texts))

    def encode_image(self, images: Sequence, kind: str = "image", category: str | None = None) -> torch.Tensor:
        return self(**self.featurize_images(images, kind=kind, category=category))

    def encode_composed(
        self, images: Sequence, texts: Sequence[str], kind: str = "cir_query", category: str | None = None
    ) -> torch.Tensor:
        return self(**self.featurize_images(images, texts, kind=kind, category=category))


def trim_padding(inputs: dict) -> dict:
    """Drop the sequence columns that are padding in every row (e.g. a GradCache chunk cut from a
    batch padded to a longer sentence elsewhere). RoPE attention depends on relative positions only, so
    the embeddings are unchanged; the compute and activation memory of those columns are saved."""
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return inputs
    used = mask.bool().any(dim=0).nonzero()
    if used.numel() == 0 or (int(used[0]) == 0 and int(used[-1]) == mask.shape[1] - 1):
        return inputs
    first, last = int(used[0]), int(used[-1]) + 1
    return {
        k: v[:, first:last] if isinstance(v, torch.Tensor) and v.shape[:2] == mask.shape else v
        for k, v in inputs.items()
    }
