"""FAISS index files: `write_index` writes the index plus a JSON sidecar (`<path>.json`: format, kind, options,
n, d) so that `read_index` can check the file is what the caller expects before searching it, and memory-maps it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mmembed.errors import ConfigError
from mmembed.inference.faiss_index import FORMAT, KINDS, _faiss, describe_index, set_search_params


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def write_index(index, path: str | Path, extra: Mapping | None = None) -> Path:
    """Write `index` to `path` and its sidecar to `<path>.json` (`extra`: anything else to record, e.g. the model)."""
    faiss = _faiss()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = describe_index(index)
    if extra:
        info["extra"] = dict(extra)
    faiss.write_index(index, str(path))
    sidecar_path(path).write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_index_info(path: str | Path) -> dict:
    side = sidecar_path(path)
    if not Path(path).is_file() or not side.is_file():
        raise ConfigError(
            f"{path}: expected a FAISS index file and its sidecar {side.name}; write them with write_index"
        )
    info = json.loads(side.read_text())
    if info.get("format") != FORMAT or info.get("kind") not in KINDS:
        raise ConfigError(f"{side}: not an {FORMAT} sidecar (format {info.get('format')!r}, kind {info.get('kind')!r})")
    return info


def read_index(path: str | Path, mmap: bool = True, expected_n: int | None = None, expected_d: int | None = None):
    """Load an index written by `write_index`, memory-mapped by default; check it against its sidecar.

    What `mmap=True` does per kind (measured with faiss-cpu 1.15):
    - ivf: `IO_FLAG_MMAP` reads the inverted lists as `OnDiskInvertedLists` mapped from the file: loading
      costs no private memory, and a query pages in only the lists it probes.
    - flat and hnsw: `IO_FLAG_MMAP` only concerns IVF data, so it would load them fully into RAM.
      `IO_FLAG_MMAP_IFC` (faiss >= 1.11) maps the stored vectors instead, and for HNSW the graph
      arrays too (no private copy either). A flat query reads the whole file; an HNSW graph walk
      touches pages all over it: both are only fast while the file stays in the page cache.
    A mapped index is read-only (do not add to it) and reads the file for as long as it lives: do not
    overwrite or delete the file meanwhile. With an older faiss lacking IO_FLAG_MMAP_IFC, flat and
    hnsw load into RAM.
    """
    faiss = _faiss()
    info = read_index_info(path)
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP if info["kind"] == "ivf" else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
    index = faiss.read_index(str(path), flags)
    found = describe_index(index)
    if (found["kind"], found["n"], found["d"]) != (info["kind"], info["n"], info["d"]):
        raise ConfigError(
            f"{path} holds a {found['kind']} index of {found['n']} x {found['d']} but its sidecar says "
            f"{info['kind']} {info['n']} x {info['d']}: rewrite both with write_index"
        )
    for name, want, have in (("vectors", expected_n, found["n"]), ("dimension", expected_d, found["d"])):
        if want is not None and want != have:
            raise ConfigError(f"{path}: index has {name} {have}, expected {want}; rebuild it for these embeddings")
    if info["kind"] in ("ivf", "hnsw"):
        key = "nprobe" if info["kind"] == "ivf" else "ef_search"
        set_search_params(index, **{key: info["options"][key]})
    return index
