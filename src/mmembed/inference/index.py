"""A vector index on disk, and top-k search over it (exact matrix product, or FAISS).

An index folder holds:
- `vectors.safetensors`: one float32 tensor "embeddings" [N, D], L2-normalised;
- `metadata.jsonl`: line i describes row i (`{"id": i, "path": ...}` or `{"id": i, "text": ...}`, ...);
- `index.json`: how the vectors were made (model, adapter, prompt config and rendered prompts, kind,
  dim, count), so a query is embedded the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "mmembed-index/1"
VECTORS, METADATA, INFO = "vectors.safetensors", "metadata.jsonl", "index.json"
BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_ROWS = 100_000  # backend="auto" uses FAISS from this many rows on (when installed)


class IndexFormatError(ValueError):
    """A folder is not a readable index, or a query does not fit it."""


@dataclass
class Index:
    vectors: torch.Tensor  # [N, D] float32
    metadata: list[dict]
    info: dict

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries, k: int = 5, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows by inner product (= cosine for normalised vectors): (scores [Q, k], ids [Q, k])."""
        return search(self.vectors, queries, k, backend)


def write_index(out_dir: str | Path, vectors, metadata: Sequence[dict], info: dict) -> Path:
    from safetensors.torch import save_file

    vectors = torch.as_tensor(vectors, dtype=torch.float32).contiguous()
    if vectors.dim() != 2 or vectors.shape[0] != len(metadata):
        raise IndexFormatError(f"{tuple(vectors.shape)} vectors for {len(metadata)} metadata rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": vectors}, str(out / VECTORS))
    with open(out / METADATA, "w", encoding="utf-8") as f:
        for row in metadata:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    info = {"format": FORMAT, **info, "dim": int(vectors.shape[1]), "count": int(vectors.shape[0])}
    (out / INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return out


def load_index(index_dir: str | Path) -> Index:
    from safetensors.torch import load_file

    folder = Path(index_dir)
    missing = [name for name in (VECTORS, METADATA, INFO) if not (folder / name).is_file()]
    if missing:
        raise IndexFormatError(f"{folder} is not an mmembed index (missing {', '.join(missing)}); build one with src/embed.py")
    info = json.loads((folder / INFO).read_text())
    vectors = load_file(str(folder / VECTORS))["embeddings"]
    with open(folder / METADATA, encoding="utf-8") as f:
        metadata = [json.loads(line) for line in f if line.strip()]
    if len(metadata) != vectors.shape[0] or info.get("count", len(metadata)) != len(metadata):
        raise IndexFormatError(f"{folder}: {vectors.shape[0]} vectors, {len(metadata)} metadata rows, count {info.get('count')}")
    return Index(vectors, metadata, info)


def choose_backend(rows: int, backend: str = "auto", faiss_min_rows: int = FAISS_MIN_ROWS) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    return "faiss" if rows >= faiss_min_rows and _faiss_available() else "exact"


def search(vectors, queries, k: int = 5, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Inner-product top-k of each query row against `vectors`: (scores [Q, k'], ids [Q, k']), k' = min(k, N)."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    queries = torch.as_tensor(queries, dtype=torch.float32)
    if queries.dim() == 1:
        queries = queries[None]
    if queries.shape[-1] != vectors.shape[-1]:
        raise IndexFormatError(f"queries have dimension {queries.shape[-1]}, the index {vectors.shape[-1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, vectors.shape[0])
    if k == 0:
        empty = torch.zeros(queries.shape[0], 0)
        return empty, empty.long()
    if choose_backend(vectors.shape[0], backend) == "faiss":
        return faiss_search(vectors, queries, k)
    return exact_search(vectors, queries, k)


def exact_search(vectors: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024):
    scores, ids = [], []
    for start in range(0, queries.shape[0], chunk):
        top = (queries[start : start + chunk] @ vectors.T).topk(k, dim=1)
        scores.append(top.values)
        ids.append(top.indices)
    return torch.cat(scores), torch.cat(ids)


def faiss_search(vectors: torch.Tensor, queries: torch.Tensor, k: int):
    faiss = _import_faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors.numpy(), dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
    return torch.from_numpy(scores), torch.from_numpy(ids).long()


def _faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _import_faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("backend 'faiss' needs the faiss-cpu package: pip install faiss-cpu") from err
    return faiss
