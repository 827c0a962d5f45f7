"""STS tasks: STS12-16 ("all" = pooled over sub-files, SentEval's setting), STS-B and SICK-R."""

from __future__ import annotations

import torch

from mmembed.data.evalsets.sts import read_sts_config
from mmembed.evaluation.common import floats, prompt_record, required
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


def read_sts(cfg):
    """(list of STSPairs, description of the setting) for an STS benchmark config."""
    required(cfg, "format"), required(cfg, "path")
    return read_sts_config(cfg)


def run_sts(embedder, cfg, batch_size: int = 32, progress: bool = True) -> dict:
    fmt, path = cfg["format"], cfg["path"]
    subsets, setting = read_sts(cfg)
    metrics, n_unique = _score(embedder, subsets, batch_size, progress, cfg.get("name", fmt))
    protocol = {
        "task": "sts",
        "format": fmt,
        "source": str(path),
        "setting": setting,
        "pairs": sum(len(s) for s in subsets),
        "pairs_per_subset": {s.meta.get("subset", s.name): len(s) for s in subsets},
        "distinct_sentences_embedded": n_unique,
        "score": "Spearman x 100 of cosine similarity vs gold",
        "prompts": {"text": prompt_record(embedder, "text", subsets[0].sentences1[0])},
    }
    return {"metrics": floats(metrics), "protocol": protocol}
