"""What only a CUDA machine can check (perf/gpu_check.py runs the same checks as one script).

Marked `gpu` and skipped without CUDA: `pytest -m gpu` on a GPU machine runs exactly these.
"""

from __future__ import annotations

import pytest
import torch

from tests.scripts import load_script

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def gpu_check():
    return load_script("perf/gpu_check.py")


@pytest.mark.slow
def test_bf16_mixed_training_runs_20_steps_and_improves_sts(gpu_check, tmp_path, default_model_dir):
    result = gpu_check.check_train_bf16(tmp_path)
    assert result["steps"] == 20
    assert result["sts_b_dev_after"] > result["sts_b_dev_before"]
    assert result["max_memory_allocated_mb"] > 0


def test_qlora_4bit_loads_and_trains_adapters_only(gpu_check, tmp_path, default_model_dir):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed")
    result = gpu_check.check_qlora_4bit(tmp_path)
    assert result["linear4bit_modules"] > 0
    assert result["lora_params_with_grad"] > 0
    assert result["ok"]


def test_embedder_on_cuda_matches_cpu_float32(gpu_check, tmp_path, default_model_dir):
    result = gpu_check.check_embedder(tmp_path, n_texts=64, n_images=16)
    assert result["float32"]["min_cos_to_cpu_float32"] >= 0.9999
    assert result["bfloat16"]["min_cos_to_cpu_float32"] >= 0.999
    assert result["float32"]["max_memory_allocated_mb"] > 0


def test_e5v_reference_recipe_equals_embedder_in_fp16(gpu_check, tmp_path, default_model_dir):
    result = gpu_check.check_e5v_reference_fp16(tmp_path)
    assert min(result["min_cosine"].values()) >= gpu_check.REFERENCE_MIN_COS


@pytest.mark.distributed
def test_ddp_two_gpus_trains(gpu_check, tmp_path, default_model_dir):
    if torch.cuda.device_count() < 2:  # in the body: without CUDA the module's "needs CUDA" skip says why
        pytest.skip("needs 2 CUDA devices")
    result = gpu_check.check_ddp_2gpu(tmp_path)
    assert result["steps"] == 3 and result["ok"]


@pytest.mark.slow
def test_fsdp_saves_the_adapter_plain_training_saves(gpu_check, tmp_path, default_model_dir):
    result = gpu_check.check_fsdp_adapter(tmp_path)
    assert result["ok"], result
    assert result["tensors"] > 0 and result["max_abs_diff"] <= 1e-5
