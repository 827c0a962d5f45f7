"""2-process DDP (gloo, CPU, Lightning `strategy=ddp`) equals one process on the concatenated batch.

Each run launches tests/lit/harness.py as a script; Lightning re-launches it for rank 1. Per-device
batch 2 triplets on 2 ranks vs batch 4 on one process (tiny SmolLlava + LoRA, no dropout, inputs
padded to one fixed length). Checks DESIGN rules 3-5 through the real LightningModule: candidates
gathered with grad and DDP's gradient averaging give the single-process gradients with no extra
scaling; GradCache under DDP (chunk 2, all-reduce once after the last chunk) gives them too;
`train/num_negatives` is the global count; STS validation over 7 pairs (14 sentences, 2 a batch)
de-duplicates by id and gives the single-process Spearman (tests/lit/test_validation_sets.py pads).
Tolerances (float32): adapter gradients max|diff| / max|grad| <= 1e-5, losses 1e-5, Spearman 1e-9.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.distributed import ddp_subprocess_env
from tests.lit import harness
from tests.lit.helpers import rel_diff

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

GRAD_RTOL = 1e-5
LOSS_ATOL = 1e-5


def launch_ddp(model_dir, out_dir: Path, chunk_sizes: list[int], *extra: str) -> dict[int, dict]:
    """One 2-process launch that runs once per chunk size (0: plain) in turn; {chunk size: rank 0's result}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, harness.__file__, str(model_dir), str(out_dir), "--devices", "2", "--batch-size", "2",
           "--chunk-sizes", *map(str, chunk_sizes), *extra]
    proc = subprocess.run(cmd, env=ddp_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {chunk: torch.load(out_dir / f"result_chunk{chunk}.pt") for chunk in chunk_sizes}


@pytest.fixture(scope="module")
def single(tiny_smol_llava_dir) -> dict:
    return harness.run(tiny_smol_llava_dir, devices=1, batch_size=4, validate=True)


@pytest.fixture(scope="module")
def ddp_runs(tiny_smol_llava_dir, tmp_path_factory) -> dict[int, dict]:
    """Validation, a plain step and a GradCache step (chunk 2) in one launch: one start-up of 2 processes."""
    return launch_ddp(tiny_smol_llava_dir, tmp_path_factory.mktemp("ddp"), [0, 2], "--validate")


@pytest.fixture(scope="module")
def ddp_plain(ddp_runs) -> dict:
    return ddp_runs[0]


@pytest.fixture(scope="module")
def ddp_gradcache(ddp_runs) -> dict:
    return ddp_runs[2]


def _check_equal_to_single(ddp: dict, single: dict) -> None:
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert all(g.abs().max() > 0 for g in single["grads"].values())
    assert rel_diff(ddp["grads"], single["grads"]) <= GRAD_RTOL
    # train/loss is the mean over ranks (sync_dist) = the loss of the concatenated batch
    assert abs(ddp["metrics"]["train/loss"] - single["metrics"]["train/loss"]) <= LOSS_ATOL
    # each query competes with the positives and hard negatives of both ranks: 2 * (2 + 2) - 1
    assert ddp["metrics"]["train/num_negatives"] == single["metrics"]["train/num_negatives"] == 7
    assert ddp["global_step"] == single["global_step"] == 1


def test_ddp_plain_step_equals_one_process_on_the_concatenated_batch(ddp_plain, single):
    _check_equal_to_single(ddp_plain, single)


def test_ddp_gradcache_step_equals_one_process_on_the_concatenated_batch(ddp_gradcache, single):
    _check_equal_to_single(ddp_gradcache, single)


def test_ddp_validation_deduplicates_and_matches_one_process(ddp_plain, single):
    # 7 pairs = 14 distinct sentences, each embedded once (by id) whatever the ranks
    assert single["val"]["val/sts/inputs"] == ddp_plain["val"]["val/sts/inputs"] == 2 * len(harness.STS_PAIRS)
    assert ddp_plain["val"]["val/sts_spearman"] == pytest.approx(single["val"]["val/sts_spearman"], abs=1e-9)


def test_train_cli_with_trainer_ddp_on_two_cpu_processes(tiny_smol_llava_dir, tmp_path):
    """`python src/train.py trainer=ddp ...`: Lightning re-launches the Hydra script for rank 1."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([
        sys.executable, str(REPO / "src" / "train.py"),
        "experiment=text_only", "model.text_only=true", "val=stsb_dev", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=32-true", "trainer.max_steps=2", "data.batch_size=2", "val.sets.stsb_dev.limit=7",
        "val.sets.stsb_dev.batch_size=2", "grad_cache.chunk_size=3",
        f"model.name_or_path={tiny_smol_llava_dir}", f"hydra.run.dir={run_dir}",
    ], cwd=REPO, env=ddp_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["global_step"] == 2
    assert summary["metrics"]["train/num_negatives"] == 2 * (2 + 2) - 1  # both ranks' candidates
    # validated on 2 ranks: the distinct sentences of the 7 sampled pairs, each counted once
    assert summary["val_before"]["val/stsb_dev/inputs"] <= 14
    assert (run_dir / "adapters" / "last" / "adapter_model.safetensors").is_file()
