"""Smoke test of perf/gradcache_memory.py: one tiny configuration per mode, in-process."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    try:
        yield load_script("perf/gradcache_memory.py")
    finally:
        sys.modules.pop("gradcache_memory", None)


def test_tiny_configuration_runs_in_both_modes(bench):
    rows = [bench.run_one("tiny", 4, mode, chunk_size=2, steps=1, warmup=0, device="cpu") for mode in ("plain", "gradcache")]
    for row in rows:
        assert {"sec_per_step", "peak_rss_mb", "setup_rss_mb"} <= set(row) and row["cuda_peak_mb"] is None
    # Both modes embed the same seeded batch; the benchmark's encoder has dropout, drawn differently by the
    # chunked GradCache pass, so the losses agree to a few percent, not exactly (exactness: test_gradcache.py).
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=0.05)


@pytest.mark.slow
def test_default_model_configuration_runs_on_nli_triplets(bench, default_model_dir, data_root, monkeypatch):
    monkeypatch.setenv("MMEMBED_DATA", str(data_root))
    encoder = bench.build_default_encoder(torch.device("cpu"))
    groups = encoder.groups(2, torch.Generator().manual_seed(0))  # run_one draws the same rows (same seed)
    assert len(groups) == 3 and all(g["input_ids"].shape[0] == 2 for g in groups)
    rows = [bench.run_one("default", 2, mode, chunk_size=1, steps=1, warmup=0, device="cpu") for mode in ("plain", "gradcache")]
    # Fresh LoRA adapters have B = 0, so at step 0 their dropout changes nothing and the base model has no
    # dropout: the step-0 loss is deterministic. It must equal InfoNCE written out by hand from an
    # independent eval-mode forward: 2 queries x [2 positives; 2 hard negatives], tau 0.05. (It is not
    # log(4) = 1.386: the cosines differ by ~0.4 / 0.05 in the logits; measured 1.25597 on CPU.)
    encoder.module.eval()
    with torch.no_grad():
        q, pos, neg = (encoder.encode(g).float() for g in groups)
    logits = q @ torch.cat([pos, neg]).T / 0.05
    by_hand = (logits.exp().sum(dim=1).log() - logits.diagonal()).mean().item()
    assert rows[0]["loss"] == pytest.approx(by_hand, abs=1e-4)
    # GradCache (one input per chunk, so no padding shared between rows) gives the plain step's loss
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], abs=1e-4)
    assert rows[1]["peak_rss_mb"] > 300  # the real 135M-parameter model was loaded


def test_summary_takes_medians_and_pairs_ratios_by_repeat(bench):
    def row(batch, mode, repeat, sec, rss):
        return {"batch": batch, "mode": mode, "repeat": repeat, "sec_per_step": sec, "peak_rss_mb": rss,
                "delta_rss_mb": rss - 100, "cuda_peak_mb": None}

    rows = [row(16, "plain", 0, 10.0, 900), row(16, "gradcache", 0, 13.0, 500),
            row(16, "plain", 1, 20.0, 1000), row(16, "gradcache", 1, 24.0, 520),
            row(16, "plain", 2, 12.0, 950), row(16, "gradcache", 2, 18.0, 510),
            row(64, "gradcache", 0, 50.0, 600)]
    summary = {(r["batch"], r["mode"]): r for r in bench.summarise(rows)}
    gc16 = summary[16, "gradcache"]
    assert summary[16, "plain"]["sec_per_step"] == 12.0 and summary[16, "plain"]["peak_rss_mb"] == 950
    # ratios are per back-to-back pair (1.3, 1.2, 1.5), not median(gc) / median(plain) = 18 / 12
    assert gc16["time_ratios"] == pytest.approx([1.3, 1.2, 1.5])
    assert gc16["time_ratio_median"] == pytest.approx(1.3)
    assert summary[64, "gradcache"]["time_ratios"] == [] and summary[64, "gradcache"]["time_ratio_median"] is None
    assert (64, "plain") not in summary
