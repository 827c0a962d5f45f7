"""The modality-gap numbers and PCA against hand computation, and the ablation table script."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from mmembed.evaluation.modality_gap import gap_stats, pca_2d, plot_modality_gap
from tests.scripts import load_script


def test_gap_stats_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    stats = gap_stats(image, text)
    # centroids (0.5, 0.5) and (0, 0): distance sqrt(0.5)
    assert math.isclose(stats["centroid_distance"], math.sqrt(0.5), rel_tol=1e-6)
    assert math.isclose(stats["matched_cosine"], (1.0 + 0.0) / 2, abs_tol=1e-6)
    assert math.isclose(stats["cross_cosine"], (1 + -1 + 0 + 0) / 4, abs_tol=1e-6)
    # identical clouds: no gap, matched cosine 1
    same = gap_stats(image, image)
    assert same["centroid_distance"] < 1e-6 and math.isclose(same["matched_cosine"], 1.0, rel_tol=1e-6)


def test_pca_matches_numpy_up_to_sign(tmp_path):
    points = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1, 0.1])
    got = pca_2d(points).numpy()
    centred = points.double().numpy() - points.double().numpy().mean(0)
    eigval, eigvec = np.linalg.eigh(np.cov(centred.T))
    expected = centred @ eigvec[:, ::-1][:, :2]
    for k in range(2):
        sign = np.sign(np.dot(got[:, k], expected[:, k]))
        np.testing.assert_allclose(got[:, k], sign * expected[:, k], atol=1e-4)
    plot_modality_gap({"before": (points, points + 1), "after": (points, points)}, tmp_path / "gap.png")
    assert (tmp_path / "gap.png").stat().st_size > 10_000


def _load_script():
    return load_script("experiments/modality_ablation.py")


def _fake_job(folder, arm, seed, stsb, r1, sec_per_step, vision, all_sts=True, arm_key="experiment"):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment=text_only\n- {arm_key}={arm}\n- seed={seed}\n"
                                                      if arm_key != "experiment" else f"- experiment={arm}\n- seed={seed}\n")
    metrics = {"eval/stsb/spearman": stsb, "eval/flickr8k_1k_test/t2i_R@1": r1, "gap/centroid_distance_after": 0.5}
    if all_sts:
        metrics.update({"eval/sts12/spearman": 50.0, "eval/sickr/spearman": 60.0})
    summary = {"wall_time_s": 100.0 * sec_per_step, "evaluation": {"metrics": metrics},
               "cost": {"sec_per_step": sec_per_step, "samples_per_sec": 16 / sec_per_step, "steps": 40,
                        "peak_rss_during_training_mb": 1000.0, "vision_tower_in_memory": vision}}
    (folder / "train_summary.json").write_text(json.dumps(summary))


def test_ablation_table_means_spreads_and_ratios(tmp_path):
    sweep = tmp_path / "sweep"
    _fake_job(sweep / "0", "text_only", 1, 70.0, 1.0, 8.0, False)
    _fake_job(sweep / "1", "text_only", 2, 74.0, 3.0, 8.0, False)
    _fake_job(sweep / "2", "image_text", 1, 60.0, 10.0, 10.0, True)
    _fake_job(sweep / "3", "image_text", 2, 62.0, 12.0, 12.0, True)
    text = _load_script().main([str(sweep), "--out", str(tmp_path / "out" / "ablation")])
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("|")}
    # STS-B: text 72 ± sd(70, 74) = 2.83; image 61 ± 1.41; difference +11
    assert "72.00 ± 2.83" in lines["STS-B test"] and "61.00 ± 1.41" in lines["STS-B test"]
    assert "70.00, 74.00" in lines["STS-B test"] and lines["STS-B test"].endswith("+11.00 |")
    # STS average of (50, 72, 60) and (50, 61, 60)
    assert "60.67 ± " in lines["STS average"] and "57.00 ± " in lines["STS average"]
    assert lines["s / step"].endswith("| 8.00 | 11.00 | 0.727 |")
    assert "| False | True |" in lines["vision tower in memory"]
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 20_000
    assert (tmp_path / "out" / "ablation.md").read_text() == text


def test_ablation_table_leaves_out_what_the_suite_did_not_measure(tmp_path):
    """eval=modality_ablation has STS-B as its one STS set: no STS12, SICK-R or STS-average row, no empty panel."""
    sweep = tmp_path / "sweep"
    for i, (arm, seed) in enumerate([("text_only", 1), ("text_only", 2), ("text_only", 3), ("image_text", 1)]):
        _fake_job(sweep / str(i), arm, seed, 70.0 + i, 1.0 + i, 8.0, arm == "image_text", all_sts=False)
    text = _load_script().main([str(sweep)])
    names = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert names[:4] == ["benchmark", "STS-B test", "F8k-test t2i R@1", "modality gap (centroid distance)"]
    assert "text_only (mean ± sd, seeds 1, 2, 3)" in text.splitlines()[2]
    assert "71.00 ± 1.00" in text  # STS-B of 70, 71, 72


def test_arms_told_apart_by_another_override_in_sweep_order(tmp_path):
    """ablation=text_source sweeps data= under one experiment: --arm-key data makes the arms, in sweep order
    (job 10 after job 9), with the first-minus-second column and a refusal when the key is not overridden."""
    import pytest

    sweep = tmp_path / "sweep"
    jobs = [("nli", 1, 70.0, 2.0), ("nli", 2, 72.0, 4.0)] + [("flickr30k_caption_pairs", s, 66.0, 9.0) for s in (1, 2)]
    jobs += [("nli", 3, 71.0, 3.0)] * 6 + [("flickr30k_caption_pairs", 3, 68.0, 12.0)]  # jobs 4..10
    for i, (arm, seed, stsb, r1) in enumerate(jobs):
        _fake_job(sweep / str(i), arm, seed, stsb, r1, 8.0, False, all_sts=False, arm_key="data")
    text = _load_script().main([str(sweep), "--arm-key", "data"])
    header = text.splitlines()[2]
    assert header.startswith("| benchmark | nli (mean ± sd, seeds 1, 2, 3, 3, 3, 3, 3, 3) | flickr30k_caption_pairs")
    assert header.endswith("| nli - flickr30k_caption_pairs |")
    r1 = next(line for line in text.splitlines() if line.startswith("| F8k-test t2i R@1 |"))
    # nli: 2, 4 then six 3s -> mean 3.00; caption pairs: 9, 9, 12 -> mean 10.00; difference -7.00
    assert "3.00 ± " in r1 and "10.00 ± 1.73" in r1 and r1.endswith("| -7.00 |")
    with pytest.raises(SystemExit, match="--arm-key"):
        _load_script().main([str(sweep), "--arm-key", "objective"])
