"""MMEB (`MMEBBenchmark`): every distinct (text, image) input of every dataset embedded once (evaluation.mmeb_inputs),
then hit@1 over each query's own candidates; per dataset, meta-task, IND/OOD and overall (mmembed.metrics.mmeb)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from mmembed.data.evalsets.mmeb import MMEBDataset, MMEBInput, read_mmeb
from mmembed.errors import ConfigError, DataConfigError
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.common import floats
from mmembed.evaluation.mmeb_inputs import embed_inputs, input_prompt
from mmembed.metrics.mmeb import AGGREGATES, MMEBHitAt1, dataset_info, group_members, summarize
from mmembed.models.prompts import KINDS

QUERY_CHUNK = 256
SCORE_BLOCK = 1 << 24  # floats of one gathered [queries, candidates, D] block


@dataclass(kw_only=True)
class MMEBBenchmark(Benchmark):
    """MMEB's eval files under `root` (one .jsonl / .parquet per dataset), images under `image_root` (default
    root); `datasets`: the ones to run (default all), `max_queries`: each dataset's first N rows;
    `image_kind` / `image_text_kind`: the prompt kinds of image-only and image+text inputs;
    `dataset_info`: {name: {meta_task, distribution}} for a dataset neither MMEB-V1 nor its .meta.json names;
    `missing_hint`: added to the error when `root` is missing (e.g. the command that builds it)."""

    root: str
    image_root: str | None = None
    datasets: list[str] | None = None
    max_queries: int | None = None
    image_kind: str = "image"
    image_text_kind: str = "text"
    dataset_info: dict[str, dict] = field(default_factory=dict)
    missing_hint: str | None = None
    on_error: str = "skip"
    task = "mmeb"
    needs = frozenset({"text", "image"})  # image+text inputs also need "composed"; MMEB files differ in that

    def check(self) -> list[MMEBDataset]:
        """The datasets, with every image present and every dataset's meta-task and IND/OOD known (fails fast)."""
        sets = read_mmeb(self.root, self.image_root, self.datasets, self.max_queries, hint=self.missing_hint)
        self._infos(sets)
        self.kinds()
        return sets

    def _infos(self, sets: list[MMEBDataset]) -> dict:
        overrides = self.dataset_info or {}
        clash = sorted({d.name for d in sets} & set(AGGREGATES))
        if clash:
            raise DataConfigError(f"MMEB dataset name(s) {clash} clash with the averages' names; rename the file(s)")
        return {d.name: dataset_info(d.name, d.file_meta, overrides.get(d.name)) for d in sets}

    def kinds(self) -> dict[str, str]:
        """The prompt kind of each input modality."""
        kinds = {"text": "text", "image": self.image_kind or "image", "image+text": self.image_text_kind or "text"}
        for key, kind in (("image_kind", kinds["image"]), ("image_text_kind", kinds["image+text"])):
            if kind not in KINDS:
                raise ConfigError(f"benchmark {self.name!r}: {key}={kind!r} is not a prompt kind; one of {KINDS}")
        return kinds

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        sets = self.check()
        kinds, infos = self.kinds(), self._infos(sets)
        slot: dict[MMEBInput, int] = {}
        for d in sets:
            for q in d.queries:
                for inp in (q.query, *q.candidates):
                    slot.setdefault(inp, len(slot))
        inputs = list(slot)
        table, failed = embed_inputs(embedder, inputs, kinds, batch_size, self.on_error, progress, self.name)
        bad = set(failed)
        metric, chance, datasets_protocol = MMEBHitAt1(), {}, {}
        for d_id, d in enumerate(sets):
            rows = [[slot[q.query]] + [slot[c] for c in q.candidates] for q in d.queries]
            kept = [r for r in rows if not bad.intersection(r)]
            if not kept:
                raise DataConfigError(f"MMEB {d.name}: no query left whose images could all be read")
            # Queries in chunks whose gathered candidate block stays under SCORE_BLOCK floats.
            step = max(1, min(QUERY_CHUNK, SCORE_BLOCK // (max(len(r) for r in kept) * table.shape[1])))
            for start in range(0, len(kept), step):
                chunk = kept[start : start + step]
                width = max(len(r) for r in chunk) - 1
                cand = torch.tensor([r[1:] + [r[1]] * (width - len(r) + 1) for r in chunk])
                mask = torch.tensor([[j < len(r) - 1 for j in range(width)] for r in chunk])
                scores = torch.einsum("bd,bcd->bc", table[torch.tensor([r[0] for r in chunk])], table[cand])
                metric.update(scores, [d_id] * len(chunk), list(range(start, start + len(chunk))), mask=mask)
            sizes = [len(r) - 1 for r in kept]
            chance[d.name] = 100.0 * sum(1 / s for s in sizes) / len(sizes)
            first = d.queries[0]
            datasets_protocol[d.name] = {
                "files": [str(f) for f in d.files], "meta_task": infos[d.name].meta_task,
                "distribution": infos[d.name].distribution, "rows_in_file": d.rows_in_file, "queries": len(kept),
                "queries_dropped_unreadable_image": len(rows) - len(kept),
                "candidates_per_query": [min(sizes), max(sizes)],
                "query_modalities": dict(Counter(q.query.modality for q in d.queries)),
                "candidate_modalities": dict(Counter(c.modality for q in d.queries for c in q.candidates)),
                **({"file_meta": d.file_meta} if d.file_meta else {}),
                "prompts": {"query": input_prompt(embedder, kinds, first.query),
                            "gold_target": input_prompt(embedder, kinds, first.candidates[0])},
            }
        scores = metric.compute()
        per_dataset = {d.name: float(scores[i]) for i, d in enumerate(sets)}
        used = {d.name: infos[d.name] for d in sets}
        metrics = {**per_dataset, **summarize(per_dataset, used)}
        chance.update(summarize(chance, used))
        n_inputs = sum(1 + len(q.candidates) for d in sets for q in d.queries)
        protocol = {
            "task": "mmeb",
            "root": str(self.root),
            "image_root": str(self.image_root or self.root),
            "score": "hit@1 (percent) over each query's own candidates, gold at index 0; cosine similarity; a tie "
                     "with the gold counts as a hit (MMEB's argmax takes the first maximum, the gold)",
            "averages": "plain means over datasets: meta-task, IND/OOD, overall = all datasets",
            "average_members": group_members(used),
            "inputs_in_rows": n_inputs,
            "unique_inputs_embedded": {"total": len(inputs), **Counter(x.modality for x in inputs)},
            "unreadable_inputs_skipped": len(failed),
            "prompt_kinds": kinds,
            "chance": floats(chance),
            "datasets": {k: {kk: vv for kk, vv in v.items() if kk != "prompts"} for k, v in datasets_protocol.items()},
            "prompts": {k: v["prompts"] for k, v in datasets_protocol.items()},
        }
        return {"metrics": floats(metrics), "protocol": protocol}
