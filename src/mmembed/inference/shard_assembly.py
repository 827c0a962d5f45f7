"""The end of a corpus embedding run: its shards put together in corpus order, manifest.json and skipped.jsonl
written atomically, and shard files no record names removed (shards.py writes and checks the shards)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmembed.inference.shards import (
    MANIFEST,
    MANIFEST_FORMAT,
    SHARD_FILE,
    SKIPPED,
    item_key,
    read_shard,
    replace_atomically,
    shard_name,
)


@dataclass
class Assembled:
    vectors: torch.Tensor  # [embedded, dim], in corpus order
    rows: list[dict]  # index metadata: {"id": row, **corpus row}
    skipped: list[dict]  # {"input_id", **corpus row, "reason"} for inputs no shard holds


def assemble(out: Path, rows: Sequence[dict], records: Sequence[dict], dim: int) -> Assembled:
    """The corpus's vectors from its shards, in corpus order: each input once (a shard's stale rows, of
    inputs no longer in the corpus, are left out); every input must be embedded or skipped."""
    found: dict[str, torch.Tensor] = {}
    reasons: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r["k"]):
        vectors, shard_rows = read_shard(out, record)
        for vector, row in zip(vectors, shard_rows):
            found.setdefault(item_key(row), vector)
        for entry in record["skipped"]:
            reasons[item_key(entry)] = entry["reason"]  # a later attempt's reason wins
    picked, index_rows, skipped, missing = [], [], [], []
    for position, row in enumerate(rows):
        key = item_key(row)
        if key in found:
            index_rows.append({"id": len(picked), **row})
            picked.append(found[key])
        elif key in reasons:
            skipped.append({"input_id": position, **row, "reason": reasons[key]})
        else:
            missing.append(position)
    if missing:
        raise RuntimeError(f"{len(missing)} inputs (positions {missing[:5]}...) are in no shard; rerun to embed them")
    vectors = torch.stack(picked) if picked else torch.zeros(0, dim)
    return Assembled(vectors, index_rows, skipped)


def write_manifest(out: Path, header: dict, records: Sequence[dict], counts: dict) -> None:
    manifest = {"format": MANIFEST_FORMAT, **header, "counts": counts,
                "shards": sorted(records, key=lambda r: r["k"])}
    replace_atomically(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"))


def write_skipped(out: Path, skipped: Sequence[dict]) -> None:
    lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped)
    replace_atomically(out / SKIPPED, lambda p: p.write_text(lines, encoding="utf-8"))


def remove_unlisted(out: Path, records: Sequence[dict]) -> list[str]:
    """Delete shard files no record in `records` names (replaced, corrupt or interrupted ones)."""
    keep = {record["name"] for record in records}
    removed = []
    for path in sorted(out.iterdir()):
        match = SHARD_FILE.match(path.name)
        if match and shard_name(int(match.group(1)), int(match.group(2))) not in keep:
            path.unlink()
            removed.append(path.name)
    return removed
