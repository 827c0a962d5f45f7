"""The CPU-dependent training precision default: bf16-mixed only where the CPU has native bf16."""

from __future__ import annotations

import json

import pytest

from mmembed.hardware import ENV, cpu_has_native_bf16, cpu_train_precision
from tests.pipeline.helpers import compose_train, run_train_cli


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / f"cpuinfo-{flags.replace(' ', '-')}"
    path.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return str(path)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpu_has_native_bf16.cache_clear()
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16")) is True
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16")) is True
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512bw")) is False  # AVX512 alone: emulated bf16
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False
    cpu_has_native_bf16.cache_clear()


def test_the_environment_overrides_and_the_config_resolves_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "16-mixed")
    assert cpu_train_precision() == "16-mixed"
    assert compose_train(["experiment=text_only"], tmp_path).trainer.precision == "16-mixed"
    monkeypatch.delenv(ENV)
    want = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert compose_train(["experiment=text_only"], tmp_path).trainer.precision == want
    assert compose_train(["trainer.precision=32-true"], tmp_path).trainer.precision == "32-true"


@pytest.mark.slow  # a src/train.py process that trains 2 steps
def test_a_run_on_the_default_precision_trains(tiny_smol_llava_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)  # what a user gets: the machine's choice
    run = tmp_path / "run"
    proc = run_train_cli(["experiment=text_only", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
                          "data.batch_size=4", "val=none", "validate_before_training=false", "~logger",
                          f"hydra.run.dir={run}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["metrics"]["train/loss"] > 0
    amp = "Using bfloat16 Automatic Mixed Precision" in proc.stdout + proc.stderr
    assert amp == cpu_has_native_bf16()  # this project's machines have AVX512-BF16: bf16-mixed


def test_evaluation_loads_the_inference_dtype_and_training_keeps_float32(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from mmembed.hardware import cpu_inference_dtype
    from mmembed.run.config import model_spec
    from tests.conftest import REPO

    monkeypatch.delenv(ENV)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=sts"])
    spec = model_spec(cfg, explicit_prompts=False, inference=True)
    assert spec.dtype == cpu_inference_dtype() == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert spec.vision_dtype == "float32"
    assert model_spec(compose_train([], tmp_path), explicit_prompts=False).dtype == "float32"  # master weights
    monkeypatch.setenv(ENV, "32-true")
    assert cpu_inference_dtype() == "float32"


def test_embedder_auto_dtype_follows_the_cpu(tiny_smol_llava_dir, monkeypatch):
    import torch

    from mmembed.inference import Embedder
    from mmembed.models.backbones import vision_modules

    monkeypatch.delenv(ENV)
    model = Embedder.from_pretrained(tiny_smol_llava_dir).backbone.model
    llm = {p.dtype for p in model.model.language_model.parameters()}
    vision = {p.dtype for m in vision_modules(model).values() for p in m.parameters()}
    assert llm == {torch.bfloat16 if cpu_has_native_bf16() else torch.float32} and vision == {torch.float32}
    monkeypatch.setenv(ENV, "32-true")
    pinned = Embedder.from_pretrained(tiny_smol_llava_dir).backbone.model
    assert {p.dtype for p in pinned.parameters()} == {torch.float32}
