"""How `Embedder` runs one featurised batch: through the shared-prefix cache when it applies, and image
batches `image_chunk` rows at a time (the vision tower's activations, not the decoder's, bound memory there)."""

from __future__ import annotations

import torch
from torch import nn

from mmembed.inference.prefix import PrefixCache
from mmembed.models.backbones import vision_modules
from mmembed.models.embedder import MLLMEmbedder


def forward_in_chunks(embedder: MLLMEmbedder, prefix: PrefixCache | None, inputs: dict, image_chunk: int) -> torch.Tensor:
    """One featurised batch -> [rows, D] embeddings, image batches in chunks of `image_chunk` rows."""
    # MM-GEM's dual-tower images come as pixel_values alone (no tokens)
    rows = (inputs["input_ids"] if "input_ids" in inputs else inputs["pixel_values"]).shape[0]
    chunk = image_chunk if "pixel_values" in inputs and _row_aligned(embedder.backbone.family, inputs, rows) else rows
    if chunk >= rows:
        return _forward_rows(embedder, prefix, inputs)
    return torch.cat([_forward_rows(embedder, prefix, {k: v[s : s + chunk] for k, v in inputs.items()})
                      for s in range(0, rows, chunk)])


def _row_aligned(family: str, inputs: dict, rows: int) -> bool:
    """Every input is a tensor with one entry per row (not Qwen2-VL's flattened patches)."""
    return family != "qwen2_vl" and all(
        isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows for v in inputs.values()
    )


def _forward_rows(embedder: MLLMEmbedder, prefix: PrefixCache | None, inputs: dict) -> torch.Tensor:
    if prefix is not None:
        rest = prefix.split(inputs)
        if rest is not None:
            return prefix.forward(rest)
    return embedder(**inputs)


def channels_last_vision(model: nn.Module) -> None:
    """Conv vision towers (EfficientNet) go channels-last on CPU, the layout oneDNN's convolutions prefer;
    same results."""
    for module in vision_modules(model).values():
        if any(isinstance(m, nn.Conv2d) for m in module.modules()):
            module.to(memory_format=torch.channels_last)
