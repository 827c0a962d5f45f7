"""A vector index on disk, and top-k search over it (exact matrix product, or FAISS).

An index folder holds:
- `vectors.safetensors`: one float32 tensor "embeddings" [N, D], L2-normalised;
- `metadata.jsonl`: line i describes row i (`{"id": i, "path": ...}` or `{"id": i, "text": ...}`, ...);
- `index.json`: how the vectors were made (model, adapter, prompt config and rendered prompts, kind,
  dim, count, and truncate_dim for Matryoshka-truncated vectors), so a query is embedded the same way;
- optionally `faiss.index` (+ `faiss.index.json`): a FAISS flat / IVF / HNSW index over the same rows
  (`mmembed.inference.faiss_index`, files: `faiss_files`), recorded in index.json as "faiss"; search uses it, memory-mapped.
src/embed.py writes these files from its shards (see mmembed.inference.shards).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmembed.errors import MMEmbedError

FORMAT = "mmembed-index/1"
VECTORS, METADATA, INFO = "vectors.safetensors", "metadata.jsonl", "index.json"
FAISS_FILE = "faiss.index"
BACKENDS = ("auto", "exact", "faiss")
FAISS_MIN_ROWS = 100_000  # backend="auto" uses FAISS from this many rows on (when installed)


class IndexFormatError(MMEmbedError, ValueError):
    """A folder is not a readable index, or a query does not fit it."""


@dataclass
class Index:
    vectors: torch.Tensor  # [N, D] float32
    metadata: list[dict]
    info: dict
    folder: Path | None = None  # where a prebuilt FAISS index (info["faiss"]) lives
    _faiss: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries, k: int = 5, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows by inner product (= cosine for normalised vectors): (scores [Q, k], ids [Q, k]).

        With a prebuilt FAISS index, "auto" and "faiss" search it (IVF/HNSW are approximate and may
        return id -1 where they find fewer than k rows); "exact" is always the matrix product."""
        check_query_dim(torch.as_tensor(queries).shape[-1], self.vectors.shape[-1], self.info)
        if self.folder is not None and self.info.get("faiss") and backend in ("auto", "faiss"):
            return self._prebuilt_search(queries, k)
        return search(self.vectors, queries, k, backend)

    def _prebuilt_search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        from mmembed.inference import faiss_files, faiss_index

        if self._faiss is None:
            self._faiss = faiss_files.read_index(self.folder / self.info["faiss"]["file"], mmap=True,
                                                 expected_n=len(self), expected_d=self.vectors.shape[1])
        queries = torch.as_tensor(queries, dtype=torch.float32)
        check_query_dim(queries.shape[-1], self.vectors.shape[-1], self.info)
        scores, ids = faiss_index.search(self._faiss, queries.numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()


def check_query_dim(query_dim: int, index_dim: int, info: dict | None = None) -> None:
    """One line naming both sizes when queries and index vectors differ (e.g. one of them truncate_dim-ed)."""
    if query_dim == index_dim:
        return
    made = (info or {}).get("truncate_dim")
    fix = f"with truncate_dim={made}, as the index was" if made else "without truncate_dim, as the index was"
    raise IndexFormatError(f"queries have dimension {query_dim}, the index {index_dim}: embed the queries {fix}")


def write_index(out_dir: str | Path, vectors, metadata: Sequence[dict], info: dict, faiss_kind: str | None = None,
                faiss_options: dict | None = None) -> Path:
    """Write the index files; with `faiss_kind` ("flat", "ivf", "hnsw") also a FAISS index of the same rows."""
    from safetensors.torch import save_file

    vectors = torch.as_tensor(vectors, dtype=torch.float32).contiguous()
    if vectors.dim() != 2 or vectors.shape[0] != len(metadata):
        raise IndexFormatError(f"{tuple(vectors.shape)} vectors for {len(metadata)} metadata rows")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": vectors}, str(out / VECTORS))
    with open(out / METADATA, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in metadata)
    info = {"format": FORMAT, **info, "dim": int(vectors.shape[1]), "count": int(vectors.shape[0])}
    prebuilt = out / FAISS_FILE
    for stale in (prebuilt, Path(f"{prebuilt}.json")):  # it described earlier vectors
        stale.unlink(missing_ok=True)
    if faiss_kind and len(vectors):
        from mmembed.inference import faiss_files, faiss_index

        built = faiss_index.build_index(vectors.numpy(), faiss_kind, **(faiss_options or {}))
        faiss_files.write_index(built, prebuilt)
        info["faiss"] = {"file": FAISS_FILE, **faiss_index.describe_index(built)}
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
    return Index(vectors, metadata, info, folder)


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
