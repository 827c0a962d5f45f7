"""Fast inference: `Embedder` (batch encoding), vector indexes with exact/FAISS search, adapter export.

Plain PyTorch / transformers code (no Lightning, no Hydra), usable from a notebook.
"""

from mmembed.inference.embedder import Embedder

__all__ = ["Embedder"]
