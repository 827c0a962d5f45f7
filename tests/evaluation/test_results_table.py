"""experiments/results_table.py: a table row per run, a chance row, missing benchmarks as '-'."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _module():
    return load_script("experiments/results_table.py")


def _run(tmp_path, name, metrics_by_bench, adapter=None):
    benches = {
        b: {"metrics": m, "protocol": {"task": "x", "chance": {"t2i_R@1": 0.1, "i2t_R@1": 0.5}, "images": 1000}}
        for b, m in metrics_by_bench.items()
    }
    path = tmp_path / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model": "/cache/mmembed/v1", "adapter": adapter, "benchmarks": benches}))
    return path


def test_table(tmp_path, capsys):
    a = _run(tmp_path, "a", {"sts12": {"spearman": 50.0}, "stsb": {"spearman": 60.0}, "sickr": {"spearman": 70.0},
                             "flickr8k_1k_test": {"t2i_R@1": 1.234, "i2t_R@1": 2.0}})
    b = _run(tmp_path, "b", {"stsb": {"spearman": 65.55}}, adapter="/logs/train/runs/r1/adapters/last")
    text = _module().main([str(a), str(b.parent), "--out", str(tmp_path / "t.md")])
    rows = text.splitlines()
    assert rows[0].startswith("| run | STS12 | STS-B | SICK-R | F8k-test t2i R@1")
    assert rows[2].startswith("| v1 | 50.0 | 60.0 | 70.0 | 1.2 |") and rows[2].endswith("| 60.0 |")  # STS avg
    assert rows[3].startswith("| v1 + r1/last | - | 65.5 | - |") and rows[3].endswith("| - |")
    assert rows[4].startswith("| chance | 0.0 | 0.0 | 0.0 | 0.1 |")
    assert (tmp_path / "t.md").read_text() == text and "flickr8k_1k_test: images 1000" in text
