"""benchmarks/encode_throughput.py runs end to end (tiny model) and both recipes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_encode_throughput_runs_and_recipes_agree(tiny_dir, data_root, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/encode_throughput.py"), "--model", str(tiny_dir),
         "--n-texts", "12", "--n-images", "4", "--batch-size", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MMEMBED_DATA": str(data_root), "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| texts/s (CPU time)" in proc.stdout and "peak RSS (ru_maxrss)" in proc.stdout
    result = json.loads(out.read_text())
    assert min(result["min_cosine"].values()) >= 0.9999
    assert result["stats"]["mmembed"]["texts"]["n"] == 12 and result["stats"]["reference"]["images"]["n"] == 4
