"""perf/step_flops.py: its FLOP count is the hand formula on a matmul-only piece of a tiny model's step, its GEMM
record agrees with FlopCounterMode, and its main runs end to end (framework and bare runs) on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("perf/step_flops.py")


def tiny_overrides(tiny_dir) -> list[str]:
    return [f"model.name_or_path={tiny_dir}", "data.batch_size=4"]


@pytest.fixture(scope="module")
def tiny_step(bench, tiny_smol_llava_dir, data_root, tmp_path_factory):
    """text_only's step on the tiny model, built by the script from the composed config."""
    cfg = bench.compose_config("text_only", tiny_overrides(tiny_smol_llava_dir), tmp_path_factory.mktemp("run"))
    return bench.build_step(cfg)


def test_flops_of_a_plain_matmul_are_the_hand_formula(bench):
    m, k, n = 6, 5, 3
    a, b = torch.randn(m, k, requires_grad=True), torch.randn(k, n, requires_grad=True)
    fwd = bench.count_flops(lambda: a @ b)
    assert fwd.total == 2 * m * k * n
    assert [(g["m"], g["k"], g["n"], g["dtype"], g["calls"]) for g in fwd.gemms] == [(m, k, n, "float32", 1)]
    # backward: grad_a = g @ b.T ([m,n]x[n,k]) and grad_b = a.T @ g ([k,m]x[m,n]), 2*m*k*n each
    assert bench.count_flops(lambda: (a @ b).sum().backward()).total == 3 * 2 * m * k * n


@pytest.mark.slow
def test_flops_of_the_tiny_models_mlp_projection_are_the_hand_formula(bench, tiny_step):
    up_proj = next(m for name, m in tiny_step.embedder.named_modules()
                   if name.endswith("layers.0.mlp.up_proj.base_layer")
                   or (name.endswith("layers.0.mlp.up_proj") and isinstance(m, torch.nn.Linear)))
    assert up_proj.bias is None
    k, n, m = up_proj.in_features, up_proj.out_features, 3 * 7
    x = torch.randn(3, 7, k, requires_grad=True)
    fwd = bench.count_flops(lambda: up_proj(x))
    assert fwd.total == 2 * m * k * n
    assert [(g["m"], g["k"], g["n"], g["calls"]) for g in fwd.gemms] == [(m, k, n, 1)]
    # the frozen base weight gets no gradient: backward is the input gradient only
    assert not up_proj.weight.requires_grad
    assert bench.count_flops(lambda: up_proj(x).sum().backward()).total == 2 * 2 * m * k * n


@pytest.mark.slow
def test_the_step_count_covers_its_gemms(bench, tiny_step):
    batch = next(tiny_step.batches())
    flops = bench.step_flops(tiny_step, batch)
    gemm_flops = sum(g["flops"] for g in flops.gemms)
    # every 2-D matmul GemmShapes saw is what FlopCounterMode counted for aten.mm + aten.addmm
    assert gemm_flops == flops.by_op.get("mm", 0) + flops.by_op.get("addmm", 0) > 0
    assert flops.total >= gemm_flops and flops.total == sum(flops.by_op.values())
    assert all(p.grad is None for p in tiny_step.embedder.parameters())  # the count leaves no gradients behind
    # text_only embeds anchors, positives and hard negatives of 4 rows in one forward: 12 rows
    (group,) = bench.padding_shares(tiny_step, batch)
    assert group["shape"][0] == 12 and 0 <= group["padding_share"] < 1


def test_run_order_alternates():
    bench = load_script("perf/step_flops.py")
    assert bench.run_order(3) == ["framework", "bare", "bare", "framework", "framework", "bare"]
    assert bench.run_order(2, baseline=True) == ["framework", "bare", "baseline", "baseline", "bare", "framework"]


@pytest.mark.slow
def test_main_runs_end_to_end_on_the_tiny_model(bench, tiny_smol_llava_dir, data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMEMBED_DATA", str(data_root))
    out = tmp_path / "step_flops.json"
    bench.main(["--experiments", "text_only", "--steps", "1", "--repeats", "1", "--top-gemms", "2", "--mm-calls", "1",
                "--profile", "1", "--json", str(out), "--baseline", "lora.dropout=0",
                "--", *tiny_overrides(tiny_smol_llava_dir)])
    printed = capsys.readouterr().out
    assert "| framework overhead" in printed and "top ops by self CPU time" in printed
    result = json.loads(out.read_text())["results"]["text_only"]
    assert [r["kind"] for r in result["runs"]] == ["framework", "bare", "baseline"]
    assert [r["steps"] for r in result["runs"]] == [2, 2, 2]  # one warm-up step + the timed one
    assert len(result["flops"]["peaks"]) == 2
    summary = result["summary"]
    assert math.isclose(summary["overhead"], summary["framework_sec_per_step"] / summary["bare_sec_per_step"] - 1)
    assert summary["achieved_flops_per_s"] == pytest.approx(result["flops"]["flops"] / summary["bare_sec_per_step"])
    assert summary["peak_bf16_flops_per_s"] > 0 and summary["peak_fp32_flops_per_s"] > 0
    assert summary["speedup_vs_baseline"] == pytest.approx(summary["baseline_sec_per_step"]
                                                           / summary["framework_sec_per_step"])
    assert "speed-up of the default over that" in printed
