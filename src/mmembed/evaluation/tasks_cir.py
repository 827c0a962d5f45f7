"""Composed image retrieval tasks: CIRR (reference excluded, Recall_subset) and FashionIQ (R@10/R@50)."""

from __future__ import annotations

import torch

from mmembed.data.evalsets.cir import FASHIONIQ_CATEGORIES, read_cirr, read_fashioniq
from mmembed.evaluation.common import chance_recall, floats, option, prompt_record, required
from mmembed.evaluation.encode import encode_composed, encode_images
from mmembed.metrics.cir import CIRRRecall
from mmembed.metrics.retrieval import RetrievalRecall


def _embed(embedder, bench, cfg, batch_size, progress, target_kind, query_kind, category=None):
    """Gallery images once each, then one composed query per (reference, text)."""
    on_error, tag = option(cfg, "on_error", "skip"), cfg.get("name", bench.name)
    names = list(bench.gallery)
    gal_emb, gal_ok, gal_failed = encode_images(
        embedder, [bench.gallery[n] for n in names], batch_size, kind=target_kind, category=category,
        on_error=on_error, desc=f"{tag} gallery", progress=progress,
    )
    index = {names[i]: i for i in gal_ok}
    queries = [q for q in bench.queries if q.reference in index and q.target in index]
    q_emb, q_ok, q_failed = encode_composed(
        embedder, [bench.gallery[q.reference] for q in queries], [q.caption for q in queries], batch_size,
        kind=query_kind, category=category, on_error=on_error, desc=f"{tag} queries", progress=progress,
    )
    queries = [queries[i] for i in q_ok]
    return gal_emb, gal_ok, index, q_emb, queries, gal_failed + q_failed


def read_cirr_benchmark(cfg):
    return read_cirr(
        required(cfg, "root"), option(cfg, "split", "val"), cfg.get("image_root"), cfg.get("image_dir"),
        cfg.get("captions_file"), option(cfg, "gallery", "split"),
    )


def read_fashioniq_benchmarks(cfg):
    root, split = required(cfg, "root"), option(cfg, "split", "val")
    return [
        read_fashioniq(root, category, split, cfg.get("image_dir"), option(cfg, "gallery", "split"))
        for category in option(cfg, "categories", FASHIONIQ_CATEGORIES)
    ]


def run_cirr(embedder, cfg, batch_size: int = 16, progress: bool = True) -> dict:
    bench = read_cirr_benchmark(cfg)
    gal_emb, gal_ok, index, q_emb, queries, failed = _embed(
        embedder, bench, cfg, batch_size, progress, "cir_target", "cir_query"
    )
    metric = CIRRRecall()
    metric.update(candidates=gal_emb, candidate_ids=torch.tensor(gal_ok))
    qids = torch.arange(len(queries))
    members = [(i, index[m]) for i, q in enumerate(queries) for m in q.members if m in index]
    metric.update(
        queries=q_emb, query_ids=qids, reference_ids=torch.tensor([index[q.reference] for q in queries]),
        target_ids=torch.tensor([index[q.target] for q in queries]), members=torch.tensor(members).view(-1, 2),
    )
    sizes = [sum(m in index and m != q.reference for m in q.members) for q in queries]
    chance = chance_recall(len(gal_ok) - 1, [1] * len(queries), metric.ks)
    for k in metric.subset_ks:  # one target among s subset candidates
        chance[f"Rsubset@{k}"] = 100.0 * sum(min(k, s) / s for s in sizes if s) / len(sizes)
    protocol = {
        "task": "cirr",
        **bench.meta,
        "queries": len(queries),
        "candidates": len(gal_ok),
        "candidates_per_query": "gallery minus the query's reference image",
        "subset_candidates_per_query": sorted(set(sizes)),
        "chance": floats(chance),
        "unreadable_images_skipped": failed,
        "prompts": {
            "cir_query": prompt_record(embedder, "cir_query", queries[0].caption),
            "cir_target": prompt_record(embedder, "cir_target"),
        },
    }
    return {"metrics": floats(metric.compute()), "protocol": protocol}


def run_fashioniq(embedder, cfg, batch_size: int = 16, progress: bool = True) -> dict:
    split = option(cfg, "split", "val")
    metrics, protocol = {}, {"task": "fashioniq", "split": split, "categories": {}, "prompts": {}}
    benches = read_fashioniq_benchmarks(cfg)
    categories = [b.meta["category"] for b in benches]
    for category, bench in zip(categories, benches):
        cat = bench.meta["prompt_category"]
        gal_emb, gal_ok, index, q_emb, queries, failed = _embed(
            embedder, bench, cfg, batch_size, progress, "fiq_target", "fiq_query", category=cat
        )
        metric = RetrievalRecall(ks=(10, 50))
        metric.update(candidates=gal_emb, candidate_ids=torch.tensor(gal_ok))
        qids = torch.arange(len(queries))
        pos = torch.stack([qids, torch.tensor([index[q.target] for q in queries])], dim=1)
        metric.update(queries=q_emb, query_ids=qids, positives=pos)
        for k, v in metric.compute().items():
            metrics[f"{category}_{k}"] = v
        protocol["categories"][category] = {
            **bench.meta, "queries": len(queries), "candidates": len(gal_ok), "unreadable_images_skipped": failed,
        }
        protocol["prompts"][category] = {
            "fiq_query": prompt_record(embedder, "fiq_query", queries[0].caption, category=cat),
            "fiq_target": prompt_record(embedder, "fiq_target", category=cat),
        }
    for k in (10, 50):
        metrics[f"avg_R@{k}"] = sum(float(metrics[f"{c}_R@{k}"]) for c in categories) / len(categories)
    protocol["candidates_per_query"] = "every image of the category's split file (reference not removed)"
    return {"metrics": floats(metrics), "protocol": protocol}
