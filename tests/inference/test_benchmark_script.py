"""perf/encode_throughput.py runs end to end (tiny model) and the recipes agree; bf16_training.py's
run plan is the real entry point's, alternating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.scripts import load_script


def bench_module(name: str):
    return load_script(f"perf/{name}.py")


@pytest.mark.slow
def test_encode_throughput_runs_and_recipes_agree(tiny_dir, data_root, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "perf/encode_throughput.py"), "--model", str(tiny_dir),
         "--n-texts", "12", "--n-images", "4", "--batch-size", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "MMEMBED_DATA": str(data_root), "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| texts/s (CPU time)" in proc.stdout and "peak RSS (ru_maxrss)" in proc.stdout
    header = [cell.strip() for cell in proc.stdout.splitlines()[1].strip("|").split("|")]
    assert header == ["", "reference", "mmembed", "mmembed/ref", "mmembed-bf16", "mmembed-bf16/ref",
                      "mmembed-bf16/mmembed"]
    result = json.loads(out.read_text())
    assert min(result["min_cosine"].values()) >= 0.9999
    assert result["stats"]["mmembed"]["texts"]["n"] == 12 and result["stats"]["reference"]["images"]["n"] == 4
    # bfloat16 rows, in the same run: its vectors against mmembed's float32 ones
    assert result["stats"]["mmembed-bf16"]["images"]["n"] == 4
    bf16_cos = result["min_cosine_to_float32"]["mmembed-bf16"]
    assert 0.99 <= min(bf16_cos.values()) < 1.0  # bf16 rounding shows, and stays small
    assert set(result["ratios"]) == {"mmembed/reference", "mmembed-bf16/reference", "mmembed-bf16/mmembed"}


def test_encode_throughput_alternates_recipes_and_refuses_unknown_ones(capsys):
    bench = bench_module("encode_throughput")
    assert bench.run_order(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    with pytest.raises(SystemExit):
        bench.main(["--recipes", "reference,mmembed-fp8"])
    assert "unknown ['mmembed-fp8']" in capsys.readouterr().err


def test_bf16_training_runs_the_make_train_recipe_alternating(tmp_path):
    bench = bench_module("bf16_training")
    assert bench.run_order(3) == ["32-true", "bf16-mixed", "bf16-mixed", "32-true", "32-true", "bf16-mixed"]
    cmd = bench.train_command("bf16-mixed", 6, tmp_path / "run", ["model.name_or_path=/m"])
    assert cmd[:2] == [sys.executable, str(REPO / "src" / "train.py")]
    assert cmd[2:] == [
        "experiment=text_only", "~logger", "validate_before_training=false", "+trainer.limit_val_batches=0",
        "~callbacks.model_checkpoint", "trainer.enable_progress_bar=false", "trainer.precision=bf16-mixed",
        "trainer.max_steps=6", f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.step_cpu_time._target_=bf16_training.step_cpu_timer",
        f"+callbacks.step_cpu_time.output_file={Path(tmp_path / 'run' / 'step_cpu_time.json')}",
        "model.name_or_path=/m",
    ]


def test_bf16_training_table_is_medians_and_ratios():
    bench = bench_module("bf16_training")
    runs = [
        {"precision": "32-true", "sec_per_step": s, "cpu_sec_per_step": 2 * s,
         "peak_rss_during_training_mb": 1000.0, "peak_rss_process_mb": 1100.0} for s in (10.0, 8.0, 30.0)
    ] + [
        {"precision": "bf16-mixed", "sec_per_step": s, "cpu_sec_per_step": 2 * s,
         "peak_rss_during_training_mb": 500.0, "peak_rss_process_mb": 550.0} for s in (4.0, 5.0, 6.0)
    ]
    med = bench.medians(runs)
    assert med["32-true"]["sec_per_step"] == 10.0 and med["bf16-mixed"]["sec_per_step"] == 5.0
    assert bench.table(med).splitlines() == [
        "|                           | 32-true  | bf16-mixed | ratio |",
        "|---------------------------|----------|------------|-------|",
        "| s/step, wall (median)     | 10.00    | 5.00       | 0.50x |",
        "| s/step, CPU time (median) | 20.00    | 10.00      | 0.50x |",
        "| peak RSS at step ends     | 1000 MiB | 500 MiB    | 0.50x |",
        "| peak RSS of the process   | 1100 MiB | 550 MiB    | 0.50x |",
    ]
