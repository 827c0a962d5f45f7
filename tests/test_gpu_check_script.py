"""perf/gpu_check.sh on a machine without CUDA: one line, exit 0, nothing run or written; the
report logic and the QLoRA skip, checked here without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
import torch

from tests.conftest import REPO
from tests.scripts import load_script


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the checks")
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    report = tmp_path / "x.json"
    proc = subprocess.run(
        ["bash", str(REPO / "perf" / "gpu_check.sh"), str(report)],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "no CUDA device\n"
    assert not report.exists()
    assert not (tmp_path / "gpu_check.json").exists()


def load_gpu_check():
    return load_script("perf/gpu_check.py")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_check_records_the_missing_package(tmp_path):
    assert load_gpu_check().check_qlora_4bit(tmp_path) == {"skipped": "bitsandbytes not installed"}


def test_report_keeps_going_past_a_failed_check_and_exits_1(tmp_path, monkeypatch, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def broken(tmp):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpu_check, "CHECKS", {
        "first": lambda tmp: {"ok": True, "value": 1},
        "second": broken,
        "third": lambda tmp: {"skipped": "needs 2 GPUs"},
    })
    report_path = tmp_path / "r.json"
    assert gpu_check.main([str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["device"] == "Fake GPU" and report["device_count"] == 1
    assert report["checks"]["first"]["value"] == 1 and report["checks"]["first"]["ok"] is True
    assert report["checks"]["second"]["ok"] is False
    assert report["checks"]["second"]["error"] == "RuntimeError: kernel exploded"
    assert report["checks"]["third"] == {"skipped": "needs 2 GPUs", "seconds": report["checks"]["third"]["seconds"]}
    out = capsys.readouterr().out
    assert "second: FAILED" in out and "third: skipped: needs 2 GPUs" in out and "FAILED: second" in out
