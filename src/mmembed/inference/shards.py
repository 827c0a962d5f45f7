"""Shard files of a corpus embedding run, and what a rerun may reuse (plain Python; used by src/embed.py).

Every finished shard is three files in the output folder, written in this order:
- `shard-<rank>-<k>.safetensors`: tensor "embeddings", float32 [rows, dim], rows in input order;
- `shard-<rank>-<k>.jsonl`: line i describes row i (`input_id`, `modality`, and `path` or `text`, ...);
- `shard-<rank>-<k>.json`: the shard's record, its entry in manifest.json: row count, the range of input
  positions it covers, sha256 of both files, the run's settings, and the inputs it skipped with reasons.
  It is written last and atomically, so a shard without a record was interrupted and counts as not done.
k numbers shards across runs, `rank` is the process that wrote it. A rerun reuses every shard whose files
still match its record (row count and sha256) and whose settings equal the run's, and embeds only the
inputs none of them holds: inputs skipped before (e.g. an unreadable image since fixed) are tried again.
Putting finished shards together into the corpus (vectors, manifest, skipped list): shard_assembly.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST, SKIPPED = "manifest.json", "skipped.jsonl"
MANIFEST_FORMAT = "mmembed-shards/1"
SHARD_FILE = re.compile(r"^shard-(\d+)-(\d+)\.(safetensors|jsonl|json)(\.tmp)?$")


@dataclass(frozen=True)
class Shard:
    """Shard k of a run: the input positions (in the corpus order) it embeds."""

    k: int
    positions: list[int]


def item_key(row: dict) -> str:
    """What identifies an input across runs: its description (path, or line/row and text), not its position."""
    return json.dumps({k: v for k, v in row.items() if k not in ("input_id", "modality", "reason")},
                      sort_keys=True, ensure_ascii=False)


def shard_name(rank: int, k: int) -> str:
    return f"shard-{rank}-{k}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def replace_atomically(path: Path, write) -> None:
    """`write(tmp)` to a sibling temp file, then rename it over `path`: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_shard(out: Path, rank: int, k: int, vectors: torch.Tensor, rows: Sequence[dict], skipped: Sequence[dict],
                input_range: tuple[int, int], settings: dict) -> dict:
    """Write one shard's vectors, metadata and (last) its record; returns the record."""
    from safetensors.torch import save_file

    name = shard_name(rank, k)
    vectors = vectors.to(torch.float32).contiguous()
    if vectors.shape[0] != len(rows):
        raise ValueError(f"{name}: {vectors.shape[0]} vectors for {len(rows)} metadata rows")
    vec_path, meta_path = out / f"{name}.safetensors", out / f"{name}.jsonl"
    replace_atomically(vec_path, lambda p: save_file({"embeddings": vectors}, str(p)))
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    replace_atomically(meta_path, lambda p: p.write_text(lines, encoding="utf-8"))
    record = {
        "name": name, "rank": rank, "k": k, "rows": len(rows), "dim": int(vectors.shape[1]),
        "input_range": list(input_range), "vectors": vec_path.name, "metadata": meta_path.name,
        "sha256": {"vectors": sha256_file(vec_path), "metadata": sha256_file(meta_path)},
        "skipped": list(skipped), "settings": settings,
    }
    replace_atomically(out / f"{name}.json", lambda p: p.write_text(json.dumps(record, ensure_ascii=False, indent=1)))
    return record


def read_shard(out: Path, record: dict, vectors: bool = True) -> tuple[torch.Tensor | None, list[dict]]:
    """(vectors [rows, dim], or None with vectors=False; metadata rows) of one shard."""
    from safetensors.torch import load_file

    tensor = load_file(str(out / record["vectors"]))["embeddings"] if vectors else None
    with open(out / record["metadata"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tensor, rows


def verify_shard(out: Path, record: dict) -> str | None:
    """None when the shard's files match its record; else what is wrong."""
    from safetensors import safe_open

    for part in ("vectors", "metadata"):
        path = out / record[part]
        if not path.is_file():
            return f"{path.name} is missing"
        if sha256_file(path) != record["sha256"][part]:
            return f"{path.name} does not match its sha256"
    with safe_open(str(out / record["vectors"]), "pt") as f:
        rows = f.get_slice("embeddings").get_shape()[0]
    with open(out / record["metadata"], encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    if rows != record["rows"] or lines != record["rows"]:
        return f"{rows} vectors and {lines} metadata rows, the record says {record['rows']}"
    return None


def read_records(out: Path) -> dict[str, dict]:
    """Every shard record in the folder: manifest.json's entries, and the record files (newer: they win)."""
    records = {}
    if (out / MANIFEST).is_file():
        records = {r["name"]: r for r in json.loads((out / MANIFEST).read_text()).get("shards", [])}
    for path in sorted(out.glob("shard-*-*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # written atomically, so only by hand: redo that shard
            log.warning("%s is not a shard record; its inputs are embedded again", path.name)
            continue
        records[record["name"]] = record
    return records


def finished_shards(out: Path, settings: dict, overwrite: bool = False) -> list[dict]:
    """The records of the shards a run with `settings` may reuse (none with overwrite=True)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder")
    records = read_records(out) if out.is_dir() else {}
    settings = json.loads(json.dumps(settings))  # compared as stored (tuples become lists)
    if overwrite:
        return []
    if not records and (out / "index.json").is_file():
        raise ConfigError(f"out={out} already holds an index that was not built from shards; "
                          "pass overwrite=true to replace it, or choose another out=")
    valid = []
    for record in sorted(records.values(), key=lambda r: r["k"]):
        if record["settings"] != settings:
            changed = sorted(key for key in {*settings, *record["settings"]}
                             if settings.get(key) != record["settings"].get(key))
            raise ConfigError(f"out={out} holds vectors made with other settings ({', '.join(changed)} differ: "
                              f"{[record['settings'].get(c) for c in changed]} there); pass overwrite=true to "
                              "replace them, or choose another out=")
        problem = verify_shard(out, record)
        if problem:
            log.warning("shard %s is re-embedded: %s", record["name"], problem)
            continue
        valid.append(record)
    return valid


def next_shard_number(out: Path) -> int:
    """A k that neither a file in the folder (also interrupted shards' leftovers) nor a record uses yet."""
    if not out.is_dir():
        return 0
    ks = [int(m.group(2)) for p in out.iterdir() if (m := SHARD_FILE.match(p.name))]
    return max([*ks, *(r["k"] for r in read_records(out).values())], default=-1) + 1


def plan_shards(out: Path, rows: Sequence[dict], done: Sequence[dict], shard_size: int, first_k: int) -> list[Shard]:
    """The inputs no finished shard embedded, in corpus order, cut into shards of `shard_size` inputs."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    embedded = {item_key(row) for record in done for row in read_shard(out, record, vectors=False)[1]}
    pending = [i for i, row in enumerate(rows) if item_key(row) not in embedded]
    chunks = [pending[s : s + shard_size] for s in range(0, len(pending), shard_size)]
    return [Shard(first_k + j, chunk) for j, chunk in enumerate(chunks)]
