"""A distillation teacher's sentence embeddings, computed once offline and cached as safetensors (UniME stage 1).

Training then looks rows up by sentence instead of running the teacher. The student's raw sentences are
cut to `max_text_tokens` (student tokens) before templating, so the teacher must embed the very same cut
strings: callers pass the already-cut sentences (`training_sentences` does the cutting for SimCSE-style
files). A cache file is named by a key over
- the teacher: its resolved folder's name plus a hash of its files' names and sizes (config, weights);
- the key parts: the training files' content (sha256) and the cutoff (`training_key_parts`);
- the exact list of distinct sentences (sha256), so a different cutting tokenizer never reuses stale rows.
Rows are the distinct sentences in first-seen order, L2-normalised, float32.

    python -m mmembed.prep.teacher_cache --teacher all-mpnet-base-v2 --files a.csv b.csv --max-text-tokens 32
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmembed.errors import DataConfigError
from mmembed.models.smol_llava.assembly import default_cache_dir
from mmembed.models.text_encoders import MINILM, MPNET, resolve_teacher

log = logging.getLogger(__name__)

TENSOR = "embeddings"


def _sha256(parts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")  # separator: ["ab", "c"] and ["a", "bc"] must differ
    return h.hexdigest()


def teacher_id(folder_or_hub_id: str, name: str | None = None) -> str:
    """`<name>@<hash of relative file names and sizes>` for a local folder (name: the folder's); a hub id as it is."""
    folder = Path(folder_or_hub_id)
    if not folder.is_dir():
        return folder_or_hub_id
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    listing = [f"{p.relative_to(folder).as_posix()}:{p.stat().st_size}" for p in files]
    return f"{name or folder.name}@{_sha256(listing)[:12]}"


def _teacher(teacher: str) -> tuple[str, str]:
    """(folder or hub id, teacher id); packaged teachers keep their own name (MiniLM's folder is just "model")."""
    folder = resolve_teacher(teacher)
    packaged = {n.lower(): n for n in (MINILM, MPNET)}.get(str(teacher).lower().removeprefix("sentence-transformers/"))
    return folder, teacher_id(folder, packaged if packaged and not Path(str(teacher)).exists() else None)


def files_sha256(paths: Sequence[str | Path]) -> str:
    """One digest of the files' contents, in order (names excluded: a moved copy keeps its cache)."""
    digests = []
    for path in paths:
        with open(path, "rb") as f:
            digests.append(hashlib.file_digest(f, "sha256").hexdigest())
    return _sha256(digests)


def training_key_parts(files: Sequence[str | Path], max_text_tokens: int | None) -> dict:
    return {"files_sha256": files_sha256(files), "max_text_tokens": max_text_tokens or None}


def cache_key(teacher: str, key_parts: Mapping, unique_sentences: Sequence[str]) -> str:
    """Hex key of (teacher id, key parts, distinct sentences); any change gives another file."""
    described = json.dumps({"teacher": teacher, **dict(key_parts)}, sort_keys=True, default=str)
    return _sha256([described, _sha256(unique_sentences)])[:20]


@dataclass
class TeacherEmbeddings:
    """Cached teacher rows and the sentence -> row lookup a training collator uses."""

    vectors: torch.Tensor  # [n distinct sentences, D], L2-normalised float32
    index: dict[str, int]
    path: Path
    built: bool  # True when computed by this call, False when read from disk

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, sentences: Sequence[str]) -> torch.Tensor:
        """[len(sentences), D] teacher embeddings of the given (already cut) sentences."""
        try:
            idx = [self.index[s] for s in sentences]
        except KeyError as err:
            raise DataConfigError(
                f"sentence {err.args[0]!r} is not in the teacher cache {self.path}; the training files or "
                "data.max_text_tokens changed since it was built: rebuild it with the same settings as training"
            ) from None
        return self.vectors[torch.tensor(idx, dtype=torch.long)]


def _sentence_transformer(folder: str, device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device=device)


class TeacherCache:
    """`TeacherCache(cache_dir).embeddings(teacher, sentences, key_parts)`: build once, then load from disk.

    `load_encoder(folder, device)` returns an object with sentence-transformers' `encode`; the default
    loads `SentenceTransformer(folder, device=device)` and is only called when a cache file is missing.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
        load_encoder: Callable[[str, str], object] | None = None,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "teacher_embeddings"
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.load_encoder = load_encoder or _sentence_transformer

    def path_for(self, teacher: str, sentences: Sequence[str], key_parts: Mapping | None = None) -> Path:
        return self._path(_teacher(teacher)[1], list(dict.fromkeys(sentences)), key_parts)

    def _path(self, tid: str, unique: list[str], key_parts: Mapping | None) -> Path:
        name = tid.split("@")[0].replace("/", "--")
        return self.cache_dir / f"{name}-{cache_key(tid, key_parts or {}, unique)}.safetensors"

    def embeddings(self, teacher: str, sentences: Sequence[str], key_parts: Mapping | None = None) -> TeacherEmbeddings:
        from safetensors.torch import load_file, save_file

        unique = list(dict.fromkeys(sentences))
        index = {s: i for i, s in enumerate(unique)}
        folder, tid = _teacher(teacher)
        path = self._path(tid, unique, key_parts)
        if path.is_file():
            vectors = load_file(path)[TENSOR]
            if vectors.shape[0] != len(unique):
                raise DataConfigError(f"teacher cache {path} holds {vectors.shape[0]} rows, expected {len(unique)}: delete it")
            return TeacherEmbeddings(vectors, index, path, built=False)
        log.info("Embedding %d distinct sentences with teacher %s (once; cached in %s)", len(unique), folder, path)
        vectors = self._encode(self.load_encoder(folder, self.device), unique)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write then rename: readers never see half a file
        metadata = {"teacher": tid, "key_parts": json.dumps(dict(key_parts or {}), default=str),
                    "sentences": str(len(unique)), "sentences_sha256": _sha256(unique)}
        save_file({TENSOR: vectors.contiguous()}, tmp, metadata=metadata)
        os.replace(tmp, path)
        return TeacherEmbeddings(vectors, index, path, built=True)

    def _encode(self, encoder, unique: list[str]) -> torch.Tensor:
        chunks, step = [], self.batch_size * 16
        with tqdm(total=len(unique), desc="teacher embeddings", unit="sent", disable=not self.progress) as bar:
            for start in range(0, len(unique), step):
                part = unique[start : start + step]
                emb = encoder.encode(part, batch_size=self.batch_size, convert_to_tensor=True,
                                     normalize_embeddings=True, show_progress_bar=False)
                chunks.append(F.normalize(torch.as_tensor(emb).float().cpu(), dim=-1))
                bar.update(len(part))
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def training_sentences(files: Sequence[str | Path], tokenizer, max_text_tokens: int | None) -> list[str]:
    """Every distinct sentence of SimCSE-style files (sent0, sent1, hard_neg), cut as training cuts them."""
    from mmembed.data.text_pairs import load_text_pairs
    from mmembed.models.prompts import truncate_to_tokens

    ds = load_text_pairs([str(f) for f in files])
    raw = list(dict.fromkeys(s for column in ds.column_names for s in ds[column]))
    return list(dict.fromkeys(truncate_to_tokens(raw, tokenizer, max_text_tokens)))
