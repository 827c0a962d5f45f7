"""Sentence-transformers text embedders as evaluation baselines (all-MiniLM-L6-v2 by default).

`SentenceTransformer(folder)` runs the folder's own modules.json (for MiniLM and mpnet: transformer,
mean pooling over the attention mask, L2 normalisation) and its max_seq_length, so any
sentence-transformers folder is scored exactly as its authors defined it. Text only: the evaluation
runner gives it the STS benchmarks and skips image ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmembed.models.text_encoders import MINILM, packaged_minilm_dir, resolve_teacher

__all__ = ["MeanPoolTextEmbedder", "SentenceTransformerTextEmbedder", "packaged_minilm_dir"]


class SentenceTransformerTextEmbedder(nn.Module):
    """`encode_text(texts) -> [n, D]` L2-normalised float32 CPU embeddings, for `mmembed.evaluation`.

    folder: a sentence-transformers folder, a hub id, or a packaged name ("all-MiniLM-L6-v2", the
    default, or "all-mpnet-base-v2"). max_length overrides the folder's max_seq_length when given.
    It deliberately has no `encode` method: the evaluation runner reserves that name for the MLLM
    inference Embedder and calls `encode_text` on everything else.
    """

    modalities = frozenset({"text"})

    def __init__(self, folder: str | Path | None = None, max_length: int | None = None, device: str = "cpu"):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        self.name_or_path = resolve_teacher(folder or MINILM)
        self.model = SentenceTransformer(self.name_or_path, device=device)
        if max_length is not None:
            self.model.max_seq_length = max_length

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def max_length(self) -> int:
        return self.model.max_seq_length

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.model.get_embedding_dimension())
        # The caller batches (and sorts by length); one encode call per batch, no progress bar of its own.
        emb = self.model.encode(
            texts, batch_size=len(texts), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )
        return emb.float().cpu()


# The name src/eval.py and older code use (the class was a hand-written mean-pooling encoder).
MeanPoolTextEmbedder = SentenceTransformerTextEmbedder
