"""STS (`STSBenchmark`): STS12-16 ("all" = pooled over sub-files, SentEval's setting), STS-B and SICK-R;
Spearman x 100 of cosine similarity vs gold."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mmembed.data.evalsets.sts import STSPairs, read_sts_config
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.common import floats, prompt_record
from mmembed.evaluation.encode import encode_texts
from mmembed.evaluation.validation import ValidationPlan, table, text_item
from mmembed.metrics.sts import STSSpearman


def _score(embedder, subsets, batch_size: int, progress: bool, name: str) -> tuple[dict, int]:
    """Spearman per subset and pooled; every distinct sentence embedded once across subsets."""
    texts = sentences(subsets)
    emb = encode_texts(embedder, texts, batch_size, desc=f"{name} sentences", progress=progress)
    return sts_scores(emb, subsets), len(set(texts))


def sentences(subsets) -> list[str]:
    """Every sentence of `subsets`, in the order `sts_scores` reads their embeddings (first sides, then seconds)."""
    return [s for p in subsets for s in p.sentences1 + p.sentences2]


def sts_scores(emb: torch.Tensor, subsets) -> dict:
    """Spearman x 100 per subset and pooled, from `emb[j]` = the embedding of `sentences(subsets)[j]`."""
    pooled, per_subset, offset, next_id = STSSpearman(), {}, 0, 0
    for pairs in subsets:
        n = len(pairs)
        e1, e2 = emb[offset : offset + n], emb[offset + n : offset + 2 * n]
        offset += 2 * n
        gold, ids = torch.tensor(pairs.scores), torch.arange(next_id, next_id + n)
        next_id += n
        metric = STSSpearman()
        metric.update(e1, e2, gold, ids)
        pooled.update(e1, e2, gold, ids)
        per_subset[pairs.meta.get("subset", pairs.name)] = metric.compute()
    return {"spearman": pooled.compute(), **({} if len(subsets) == 1 else per_subset)}


def _embedded_pairs(pairs: STSPairs, have: set[str]) -> STSPairs:
    keep = [i for i in range(len(pairs)) if pairs.sentences1[i] in have and pairs.sentences2[i] in have]
    return STSPairs(pairs.name, [pairs.sentences1[i] for i in keep], [pairs.sentences2[i] for i in keep],
                    [pairs.scores[i] for i in keep], pairs.meta)


def sample_pairs(pairs: STSPairs, limit: int | None, seed: int) -> STSPairs:
    """A fixed seeded random subset of `limit` pairs (not the first rows, which are all from one source genre)."""
    if not limit or limit >= len(pairs):
        return pairs
    keep = random.Random(seed).sample(range(len(pairs)), limit)
    return STSPairs(pairs.name, [pairs.sentences1[i] for i in keep], [pairs.sentences2[i] for i in keep],
                    [pairs.scores[i] for i in keep], dict(pairs.meta, sampled=limit, seed=seed))


@dataclass(kw_only=True)
class STSBenchmark(Benchmark):
    """`format`: sts12_16 (a SentEval STS1x folder), stsb (an STSBenchmark folder) or sick (SICK's file);
    `split`: stsb's (default test) or sick's SemEval_set (default TEST; used only when the file has that column)."""

    format: str
    path: str
    split: str | None = None
    task = "sts"

    def check(self) -> tuple[list[STSPairs], str]:
        """(list of STSPairs, description of the setting)."""
        return read_sts_config(self.settings("format", "path", "split"))

    def run(self, embedder, batch_size: int = 32, progress: bool = True) -> dict:
        subsets, setting = self.check()
        metrics, n_unique = _score(embedder, subsets, batch_size, progress, self.name)
        protocol = {
            "task": "sts",
            "format": self.format,
            "source": str(self.path),
            "setting": setting,
            "pairs": sum(len(s) for s in subsets),
            "pairs_per_subset": {s.meta.get("subset", s.name): len(s) for s in subsets},
            "distinct_sentences_embedded": n_unique,
            "score": "Spearman x 100 of cosine similarity vs gold",
            "prompts": {"text": prompt_record(embedder, "text", subsets[0].sentences1[0])},
        }
        return {"metrics": floats(metrics), "protocol": protocol}

    def validation_plan(self, limit: int | None = None, seed: int = 42) -> ValidationPlan:
        """Each subset's seeded `limit` pairs (all: None); every distinct sentence one text input."""
        subsets = [sample_pairs(p, limit, seed) for p in self.check()[0]]
        texts = sentences(subsets)
        unique = list(dict.fromkeys(texts))
        position = {t: i for i, t in enumerate(unique)}
        rows = torch.tensor([position[t] for t in texts])

        def score(ids: torch.Tensor, emb: torch.Tensor) -> dict:
            full, present = table(ids, emb, len(unique))
            part, index = subsets, rows
            if len(present) < len(unique):  # a partial pass (sanity check, limit_val_batches): the pairs embedded
                have = {unique[i] for i in present}
                part = [p for p in (_embedded_pairs(p, have) for p in subsets) if len(p) >= 2]
                index = torch.tensor([position[t] for t in sentences(part)], dtype=torch.long)
            return {k: float(v) for k, v in sts_scores(full[index], part).items()} if part else {}  # unrounded

        return ValidationPlan([text_item(t) for t in unique], score,
                              {"pairs": sum(len(p) for p in subsets), "sentences": len(unique)})
