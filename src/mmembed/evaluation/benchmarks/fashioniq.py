"""FashionIQ (`FashionIQBenchmark`): composed image retrieval per category (the two relative captions joined),
R@10 / R@50 per category and their average over categories."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmembed.data.evalsets.cir import FASHIONIQ_CATEGORIES, CIRBenchmark, read_fashioniq
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.benchmarks.composed import embed_gallery_and_queries
from mmembed.evaluation.common import floats, prompt_record
from mmembed.metrics.retrieval import RetrievalRecall


@dataclass(kw_only=True)
class FashionIQBenchmark(Benchmark):
    """FashionIQ's release layout under `root` (captions/, image_splits/), images in `image_dir` (default
    <root>/images); candidates are every image of the category's split file (reference not removed)."""

    root: str
    split: str = "val"
    categories: list[str] = field(default_factory=lambda: list(FASHIONIQ_CATEGORIES))
    image_dir: str | None = None
    gallery: str = "split"
    on_error: str = "skip"
    task = "fashioniq"
    needs = frozenset({"text", "image", "composed"})

    def check(self) -> list[CIRBenchmark]:
        return [read_fashioniq(self.root, category, self.split or "val", self.image_dir, self.gallery or "split")
                for category in self.categories or FASHIONIQ_CATEGORIES]

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        split = self.split or "val"
        metrics, protocol = {}, {"task": "fashioniq", "split": split, "categories": {}, "prompts": {}}
        benches = self.check()
        categories = [b.meta["category"] for b in benches]
        for category, bench in zip(categories, benches):
            cat = bench.meta["prompt_category"]
            gal_emb, gal_ok, index, q_emb, queries, failed = embed_gallery_and_queries(
                embedder, bench, self.name, self.on_error, batch_size, progress, "fiq_target", "fiq_query",
                category=cat,
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
