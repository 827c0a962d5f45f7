"""MMEB's hit@1 (gold at index 0, ties to the gold as np.argmax gives), per dataset and its averages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmembed.errors import DataConfigError
from mmembed.metrics.mmeb import MMEB_V1, DatasetInfo, MMEBHitAt1, dataset_info, hit_at_1, summarize


def _brute_force(scores: np.ndarray, lengths) -> list[bool]:
    """MMEB's own rule: np.argmax over the query's candidates is 0."""
    return [int(np.argmax(row[:n])) == 0 for row, n in zip(scores, lengths)]


def test_hit_at_1_matches_mmebs_argmax_on_planted_scores_with_ties():
    gen = torch.Generator().manual_seed(0)
    # small integers: many ties, with the gold and among the others
    scores = torch.randint(0, 4, (400, 7), generator=gen).float()
    lengths = torch.randint(1, 8, (400,), generator=gen)
    mask = torch.arange(7)[None, :] < lengths[:, None]
    padded = scores.masked_fill(~mask, 99.0)  # padding scores higher than anything: must be ignored
    ours = hit_at_1(padded, mask).tolist()
    assert ours == _brute_force(scores.numpy(), lengths.tolist())
    assert 0 < sum(ours) < 400
    ties = torch.tensor([[0.5, 0.5, 0.1], [0.4, 0.5, 0.5], [0.2, 0.1, 0.2]])
    assert hit_at_1(ties).tolist() == [True, False, True]  # gold tied for the maximum: a hit


def test_mask_must_keep_the_gold():
    with pytest.raises(ValueError, match="gold candidate"):
        hit_at_1(torch.zeros(1, 2), torch.tensor([[False, True]]))


def test_per_dataset_percent_counts_each_query_once():
    metric = MMEBHitAt1()
    # dataset 0: queries 0,1,2 -> hit, miss, hit; dataset 1: query 0 -> miss, query 1 -> hit
    metric.update(torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]]), [0, 0, 0], [0, 1, 2])
    metric.update(torch.tensor([[0.0, 1.0, 0.0], [2.0, 1.0, 3.0]]), [1, 1], [0, 1],
                  mask=torch.tensor([[True, True, False], [True, True, False]]))
    # a DDP sampler's padding repeats query (0, 2): the repeat must not count twice
    metric.update(torch.tensor([[0.5, 0.5]]), [0], [2])
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out == pytest.approx({0: 200 / 3, 1: 50.0})


def test_averages_are_means_over_datasets_not_over_meta_tasks():
    per_dataset = {"a": 90.0, "b": 70.0, "c": 20.0, "d": 40.0}
    infos = {"a": DatasetInfo("retrieval", "IND"), "b": DatasetInfo("retrieval", "OOD"),
             "c": DatasetInfo("vqa", "IND"), "d": DatasetInfo("grounding", "OOD")}
    assert summarize(per_dataset, infos) == pytest.approx({
        "vqa": 20.0, "retrieval": 80.0, "grounding": 40.0,
        "IND": 55.0, "OOD": 55.0, "overall": 55.0,  # (90+70+20+40)/4, not (80+20+40)/3
    })
    assert summarize({"a": 90.0, "c": 20.0, "d": 40.0}, infos)["overall"] == pytest.approx(50.0)


def test_mmeb_v1_table_has_its_36_datasets():
    assert len(MMEB_V1) == 36
    by_task = {t: [n for n, i in MMEB_V1.items() if i.meta_task == t] for t in ("classification", "vqa", "retrieval",
                                                                                 "grounding")}
    assert {t: len(v) for t, v in by_task.items()} == {"classification": 10, "vqa": 10, "retrieval": 12, "grounding": 4}
    ind = {t: sum(MMEB_V1[n].distribution == "IND" for n in v) for t, v in by_task.items()}
    assert ind == {"classification": 5, "vqa": 6, "retrieval": 8, "grounding": 1}  # 20 IND, 16 OOD
    assert MMEB_V1["CIRR"] == DatasetInfo("retrieval", "IND") and MMEB_V1["RefCOCO"] == DatasetInfo("grounding", "OOD")


def test_dataset_info_precedence_and_errors():
    assert dataset_info("MSCOCO_t2i") == DatasetInfo("retrieval", "IND")
    local = {"meta_task": "vqa", "distribution": "OOD"}
    assert dataset_info("MSCOCO_t2i", file_meta=local) == DatasetInfo("vqa", "OOD")  # the file's own metadata wins
    setting = {"meta_task": "grounding", "distribution": "IND"}
    assert dataset_info("MSCOCO_t2i", local, setting) == DatasetInfo("grounding", "IND")  # and a setting over that
    with pytest.raises(DataConfigError, match=r"'Mine' is not one of MMEB-V1's 36.*Mine\.meta\.json"):
        dataset_info("Mine")
    with pytest.raises(DataConfigError, match="meta_task in"):
        dataset_info("Mine", {"meta_task": "captioning", "distribution": "IND"})
