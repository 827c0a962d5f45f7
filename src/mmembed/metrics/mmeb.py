"""MMEB's score: hit@1 over each query's own candidate list, then averages per dataset, meta-task, IND/OOD, overall.

MMEB (VLM2Vec) scores a query by `np.argmax` of its candidates' cosine similarities and counts a hit when
that is index 0, the gold target. argmax returns the *first* maximum, so a tie between the gold and
another candidate is a hit: here, hit = gold score >= every other candidate's score, the same rule
without depending on an argmax's tie order. Averages are plain means over datasets (MMEB's "overall" is the
mean of its 36 datasets, not of the four meta-task means).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torchmetrics import Metric

from mmembed.errors import DataConfigError
from mmembed.metrics.dedup import cat_state, dedup

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
DISTRIBUTIONS = ("IND", "OOD")
AGGREGATES = META_TASKS + DISTRIBUTIONS + ("overall",)


@dataclass(frozen=True)
class DatasetInfo:
    meta_task: str
    distribution: str  # IND: MMEB-train has a split of it; OOD: it does not

    def __post_init__(self):
        if self.meta_task not in META_TASKS or self.distribution not in DISTRIBUTIONS:
            raise DataConfigError(f"MMEB dataset info needs meta_task in {META_TASKS} and distribution in "
                                  f"{DISTRIBUTIONS}, got {self.meta_task!r} / {self.distribution!r}")


def _table(meta_task: str, ind: str, ood: str) -> dict[str, DatasetInfo]:
    out = {name: DatasetInfo(meta_task, "IND") for name in ind.split()}
    out.update({name: DatasetInfo(meta_task, "OOD") for name in ood.split()})
    return out


# MMEB-V1's 36 datasets by their MMEB-eval subset names (VLM2Vec, Table 1): 20 IND, 16 OOD.
MMEB_V1: dict[str, DatasetInfo] = {
    **_table("classification", "ImageNet-1K N24News HatefulMemes VOC2007 SUN397",
             "Place365 ImageNet-A ImageNet-R ObjectNet Country211"),
    **_table("vqa", "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W", "ScienceQA VizWiz GQA TextVQA"),
    **_table("retrieval", "VisDial CIRR VisualNews_t2i VisualNews_i2t MSCOCO_t2i MSCOCO_i2t NIGHTS WebQA",
             "FashionIQ Wiki-SS-NQ OVEN EDIS"),
    **_table("grounding", "MSCOCO", "RefCOCO RefCOCO-Matching Visual7W-Pointing"),
}


def dataset_info(name: str, file_meta: Mapping | None = None, override: Mapping | None = None) -> DatasetInfo:
    """A dataset's meta-task and IND/OOD: from a benchmark setting, else the file's metadata, else MMEB-V1's table."""
    for source in (override, file_meta):
        if source and ("meta_task" in source or "distribution" in source):
            return DatasetInfo(str(source.get("meta_task")), str(source.get("distribution")))
    if name in MMEB_V1:
        return MMEB_V1[name]
    raise DataConfigError(
        f"MMEB dataset {name!r} is not one of MMEB-V1's 36; give its meta_task ({'/'.join(META_TASKS)}) and "
        f"distribution (IND/OOD) in {name}.meta.json beside its file, or in the benchmark's dataset_info.{name}"
    )


def hit_at_1(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] bool: the gold (column 0) scores at least as high as every other valid candidate of its row.

    scores: [B, C]; mask: [B, C] bool, False for padding (rows with fewer candidates)."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"expected [B, C>=1] scores, got {tuple(scores.shape)}")
    if mask is not None:
        if not bool(mask[:, 0].all()):
            raise ValueError("every row needs its gold candidate (column 0)")
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores[:, 0] >= scores.max(dim=1).values


class MMEBHitAt1(Metric):
    """Per-dataset hit@1 (percent). Queries carry (dataset id, query id), so DDP padding is counted once."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("hits", "dataset_ids", "query_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, dataset_ids, query_ids, mask: torch.Tensor | None = None) -> None:
        hits = hit_at_1(scores.detach().float(), mask)
        ds, qs = torch.as_tensor(dataset_ids).reshape(-1).long(), torch.as_tensor(query_ids).reshape(-1).long()
        if not ds.numel() == qs.numel() == hits.numel():
            raise ValueError(f"{hits.numel()} score rows but {ds.numel()} dataset ids and {qs.numel()} query ids")
        self.hits.append(hits.to(self.device))
        self.dataset_ids.append(ds.to(self.device))
        self.query_ids.append(qs.to(self.device))

    def compute(self) -> dict[int, torch.Tensor]:
        ds, qs, hits = (cat_state(getattr(self, n)) for n in ("dataset_ids", "query_ids", "hits"))
        if ds.numel() == 0:
            raise ValueError("MMEBHitAt1: no queries were given")
        ds, qs = ds.long(), qs.long()
        key = ds * (int(qs.max()) + 1) + qs  # one id per (dataset, query)
        _, ds, hits = dedup(key, ds, hits.float())
        return {int(d): hits[ds == d].mean().mul(100) for d in torch.unique(ds).tolist()}


def summarize(per_dataset: Mapping[str, float], infos: Mapping[str, DatasetInfo]) -> dict[str, float]:
    """Meta-task, IND, OOD and overall means of the per-dataset scores (only groups that have a dataset)."""
    groups: dict[str, list[float]] = {}
    for name, score in per_dataset.items():
        info = infos[name]
        for group in (info.meta_task, info.distribution, "overall"):
            groups.setdefault(group, []).append(float(score))
    return {g: sum(groups[g]) / len(groups[g]) for g in AGGREGATES if g in groups}


def group_members(infos: Mapping[str, DatasetInfo]) -> dict[str, list[str]]:
    """Which datasets each average is over (for the protocol)."""
    out: dict[str, list[str]] = {}
    for name, info in infos.items():
        for group in (info.meta_task, info.distribution, "overall"):
            out.setdefault(group, []).append(name)
    return {g: out[g] for g in AGGREGATES if g in out}
