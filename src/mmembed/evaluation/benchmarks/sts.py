"""STS (`STSBenchmark`): STS12-16 ("all" = pooled over sub-files, SentEval's setting), STS-B and SICK-R;
Spearman x 100 of cosine similarity vs gold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmembed.data.evalsets.sts import STSPairs, read_sts_config
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.common import floats, prompt_record
from mmembed.evaluation.encode import encode_texts
from mmembed.metrics.sts import STSSpearman


def _score(embedder, subsets, batch_size: int, progress: bool, name: str) -> tuple[dict, int]:
    """Spearman per subset and pooled; every distinct sentence embedded once across subsets."""
    texts = [s for p in subsets for s in p.sentences1 + p.sentences2]
    emb = encode_texts(embedder, texts, batch_size, desc=f"{name} sentences", progress=progress)
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
    return {"spearman": pooled.compute(), **({} if len(subsets) == 1 else per_subset)}, len(set(texts))


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
