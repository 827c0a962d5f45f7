"""CIRR (`CIRRBenchmark`): composed image retrieval with the reference image excluded from the candidates;
Recall@1/5/10/50 and Recall_subset@1/2/3."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmembed.data.evalsets.cir import CIRBenchmark, read_cirr
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.benchmarks.composed import embed_gallery_and_queries
from mmembed.evaluation.common import chance_recall, floats, prompt_record
from mmembed.evaluation.validation import ValidationPlan, image_item, table
from mmembed.metrics.cir import CIRRRecall


@dataclass(kw_only=True)
class CIRRBenchmark(Benchmark):
    """CIRR's release layout under `root` (data.evalsets.cir.read_cirr): `image_root` holds the split file's
    relative paths, or `image_dir` the images by name; `captions_file` replaces the captions file (a subset);
    `gallery`: "split" (every split image must exist: the official candidates) or "available"."""

    root: str
    split: str = "val"
    image_root: str | None = None
    image_dir: str | None = None
    captions_file: str | None = None
    gallery: str = "split"
    on_error: str = "skip"
    task = "cirr"
    needs = frozenset({"text", "image", "composed"})

    def check(self) -> CIRBenchmark:
        return read_cirr(self.root, self.split or "val", self.image_root, self.image_dir, self.captions_file,
                         self.gallery or "split")

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        bench = self.check()
        gal_emb, gal_ok, index, q_emb, queries, failed = embed_gallery_and_queries(
            embedder, bench, self.name, self.on_error, batch_size, progress, "cir_target", "cir_query"
        )
        metrics, sizes, chance = cirr_scores(gal_emb, gal_ok, index, q_emb, queries)
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
        return {"metrics": floats(metrics), "protocol": protocol}

    def validation_plan(self, limit: int | None = None, seed: int = 42) -> ValidationPlan:
        """Every gallery image (`cir_target`, ids 0..G-1), then the first `limit` queries (all: None) as composed
        inputs (`cir_query`: reference image + text)."""
        bench = self.check()
        names = list(bench.gallery)
        queries = bench.queries[:limit] if limit else list(bench.queries)
        items = [image_item(bench.gallery[n], "cir_target") for n in names]
        items += [image_item(bench.gallery[q.reference], "cir_query", q.caption) for q in queries]

        def score(ids: torch.Tensor, emb: torch.Tensor) -> dict:
            full, present = table(ids, emb, len(items))
            gal_ok = [i for i in present if i < len(names)]
            index = {names[i]: i for i in gal_ok}
            kept = [j for j, q in enumerate(queries) if len(names) + j in present
                    and q.reference in index and q.target in index]
            if not kept:  # a partial pass (sanity check) embedded no complete query
                return {}
            q_emb = full[[len(names) + j for j in kept]]
            return cirr_scores(full[gal_ok], gal_ok, index, q_emb, [queries[j] for j in kept])[0]

        return ValidationPlan(items, score, {"gallery": len(names), "queries": len(queries)})


def cirr_scores(gal_emb, gal_ok: list[int], index: dict, q_emb, queries) -> tuple[dict, list[int], dict]:
    """(CIRR's metrics (unrounded), each query's subset size, chance levels) of the queries against the gallery rows `gal_ok`
    (`index`: image name -> gallery id)."""
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
    return {k: float(v) for k, v in metric.compute().items()}, sizes, chance
