"""The CPU-dependent training precision default: bf16-mixed only where the CPU has native bf16."""

from __future__ import annotations

import json

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


def test_a_run_on_the_default_precision_trains(tiny_smol_llava_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)  # what a user gets: the machine's choice
    run = tmp_path / "run"
    proc = run_train_cli(["experiment=text_only", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
                          "data.batch_size=4", "data.val_sts_dir=null", "validate_before_training=false", "~logger",
                          f"hydra.run.dir={run}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["metrics"]["train/loss"] > 0
    amp = "Using bfloat16 Automatic Mixed Precision" in proc.stdout + proc.stderr
    assert amp == cpu_has_native_bf16()  # this project's machines have AVX512-BF16: bf16-mixed
