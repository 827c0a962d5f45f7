"""FAISS indexes over L2-normalised embeddings: build (flat / IVF / HNSW), persist, memory-map, search.

Every index uses the inner-product metric, i.e. cosine similarity on L2-normalised rows:
- `flat`: `IndexFlatIP`, exact; every query reads every vector.
- `ivf`: `IndexIVFFlat` with a k-means (spherical) coarse quantiser; a query scans the `nprobe` lists
  nearest to it. Options: `nlist` (default ~4*sqrt(n)), `train_size` (k-means sample, default
  min(n, 64*nlist)), `nprobe` (16), `seed`.
- `hnsw`: `IndexHNSWFlat` graph; options `M` (16), `ef_construction` (40), `ef_search` (256).

Files (write, memory-mapped read, the JSON sidecar that checks them): faiss_files.py.
Which kind to pick: docs/faiss_indexes.md; the measurements: experiments/README.md#faiss-indexes-perffaiss_indexespy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mmembed.errors import ConfigError

FORMAT = "mmembed-faiss/1"
KINDS = ("flat", "ivf", "hnsw")
OPTIONS = {
    "flat": {},
    # Search defaults favour recall; perf/faiss_indexes.py (clustered 576-d data, recall@10 vs exact):
    # nprobe=16 gave 0.983 at 100k vectors and 0.990 at 1M; ef_search=256 gave 0.992 and 0.957 (M=16 and
    # ef_construction=40, FAISS's own default, bound HNSW's recall; larger ones build slower).
    "ivf": {"nlist": None, "train_size": None, "nprobe": 16, "seed": 0},
    "hnsw": {"M": 16, "ef_construction": 40, "ef_search": 256},
}
NORM_TOLERANCE = 1e-3  # float32 normalisation leaves |norm - 1| ~ 1e-7; anything past this was not normalised


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ConfigError("FAISS indexes need the faiss-cpu package: pip install faiss-cpu") from err
    return faiss


def default_nlist(n: int) -> int:
    """~4*sqrt(n) inverted lists (FAISS's guideline is 4-16*sqrt(n)), at most n."""
    return max(1, min(n, round(4 * math.sqrt(n))))


def build_index(vectors: np.ndarray, kind: str = "flat", **options):
    """An inner-product FAISS index holding `vectors` ([n, d] float32, rows L2-normalised), ids 0..n-1."""
    faiss = _faiss()
    vectors = _check_vectors(vectors)
    opts = _resolve_options(kind, options, n=vectors.shape[0])
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, opts["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = opts["seed"]
        # Train on a random sample, not the first rows: corpora are often sorted (by source, by class).
        sample = np.random.default_rng(opts["seed"]).choice(n, opts["train_size"], replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = opts["nprobe"]
    else:
        index = faiss.IndexHNSWFlat(d, opts["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opts["ef_construction"]
        index.hnsw.efSearch = opts["ef_search"]
    index.add(vectors)
    return index


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None):
    """Set IVF's `nprobe` / HNSW's `ef_search` (more = slower, higher recall); a setting the kind lacks is an error."""
    kind = index_kind(index)
    if nprobe is not None:
        if kind != "ivf":
            raise ConfigError(f"nprobe applies to ivf indexes only; this index is {kind}")
        if not 1 <= nprobe <= index.nlist:
            raise ConfigError(f"nprobe={nprobe}: expected 1..nlist ({index.nlist})")
        index.nprobe = int(nprobe)
    if ef_search is not None:
        if kind != "hnsw":
            raise ConfigError(f"ef_search applies to hnsw indexes only; this index is {kind}")
        if ef_search < 1:
            raise ConfigError(f"ef_search={ef_search}: expected >= 1")
        index.hnsw.efSearch = int(ef_search)
    return index


def search(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows by inner product: (scores [q, k'] float32, ids [q, k'] int64), best first, k' = min(k, n).

    An approximate index can find fewer than k' rows (IVF lists probed holding fewer vectors): FAISS pads those
    places with id -1 (and score -3.4e38).
    """
    queries = np.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ConfigError(f"queries have shape {queries.shape}; this index holds {index.d}-d vectors")
    if k < 1:
        raise ConfigError(f"k={k}: expected >= 1")
    k = min(k, index.ntotal)
    if k == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def index_kind(index) -> str:
    faiss = _faiss()
    if isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "flat"
    if isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ivf"
    if isinstance(index, faiss.IndexHNSWFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "hnsw"
    raise ConfigError(f"{type(index).__name__} is not an inner-product flat/ivf/hnsw index (build it with build_index)")


def describe_index(index) -> dict:
    """The sidecar record of `index`: kind, the options it holds now, n and d."""
    kind = index_kind(index)
    if kind == "ivf":
        options = {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    elif kind == "hnsw":
        # FAISS stores 2*M neighbours on level 0 and M above it.
        options = {
            "M": int(index.hnsw.nb_neighbors(1)),
            "ef_construction": int(index.hnsw.efConstruction),
            "ef_search": int(index.hnsw.efSearch),
        }
    else:
        options = {}
    return {"format": FORMAT, "kind": kind, "options": options, "n": int(index.ntotal), "d": int(index.d)}


def _check_vectors(vectors) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        shape = getattr(vectors, "shape", type(vectors).__name__)
        raise ConfigError(f"vectors must be a non-empty [n, d] numpy array, got {shape}")
    if vectors.dtype != np.float32:
        raise ConfigError(f"vectors must be float32, got {vectors.dtype}: pass vectors.astype(np.float32)")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    bad = ~(np.abs(norms - 1) <= NORM_TOLERANCE)  # written so that NaN rows count as bad
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(
            f"vectors must be L2-normalised for cosine search: row {row} has norm {norms[row]:.4g} "
            f"({int(bad.sum())} such rows); divide by np.linalg.norm(v, axis=1, keepdims=True)"
        )
    return np.ascontiguousarray(vectors)


def _resolve_options(kind: str, options: Mapping, n: int) -> dict:
    if kind not in KINDS:
        raise ConfigError(f"index kind {kind!r}: expected one of {KINDS}")
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if unknown:
        raise ConfigError(f"{kind} index has no option(s) {unknown}; its options are {sorted(OPTIONS[kind])}")
    opts = {**OPTIONS[kind], **{key: value for key, value in options.items() if value is not None}}
    for key, value in opts.items():
        if value is not None and (not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0):
            raise ConfigError(f"{kind} option {key}={value!r}: expected a non-negative integer")
    if kind == "ivf":
        opts["nlist"] = default_nlist(n) if opts["nlist"] is None else opts["nlist"]
        if not 1 <= opts["nlist"] <= n:
            raise ConfigError(
                f"nlist={opts['nlist']} must be between 1 and the number of vectors ({n}) "
                f"(default ~4*sqrt(n) = {default_nlist(n)})"
            )
        if opts["train_size"] is None:
            opts["train_size"] = min(n, 64 * opts["nlist"])  # FAISS samples at most 256 per list itself
        if "nprobe" not in options or options["nprobe"] is None:  # the default, not a user's setting, may shrink
            opts["nprobe"] = min(opts["nprobe"], opts["nlist"])
        if not opts["nlist"] <= opts["train_size"] <= n:
            raise ConfigError(
                f"train_size={opts['train_size']}: k-means needs nlist ({opts['nlist']}) to n ({n}) vectors"
            )
        if not 1 <= opts["nprobe"] <= opts["nlist"]:
            raise ConfigError(f"nprobe={opts['nprobe']}: expected 1..nlist ({opts['nlist']})")
    if kind == "hnsw" and min(opts.values()) < 1:
        raise ConfigError(f"hnsw options must be >= 1, got {opts}")
    return opts
