"""experiments/sweep_table.py: one row per Hydra job, labelled by the swept parameters, unfinished jobs listed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("sweep_table", REPO / "experiments" / "sweep_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(sweep: Path, n: int, tau: str, summary: dict | None) -> None:
    hydra_dir = sweep / str(n) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"sweeper": {"params": {"objective.tau": "0.02,0.05,0.1"}}}}))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(
        ["hparams_search=unime_tau", "experiment=unime_stage1", f"objective.tau={tau}", "trainer.max_steps=20"]))
    if summary is not None:
        (sweep / str(n) / "train_summary.json").write_text(json.dumps(summary))


def test_rows_per_job_with_swept_params_metrics_and_cost(tmp_path):
    sweep = tmp_path / "sweep"
    # Job folders sort numerically (10 after 2), not as strings.
    _job(sweep, 2, "0.1", {"metrics": {"val/sts_spearman": 71.234, "train/loss": 0.12345}, "global_step": 20,
                           "cost": {"sec_per_step": 8.5}, "evaluation": {"metrics": {"eval/stsb/spearman": 70.0}}})
    _job(sweep, 10, "0.02", None)
    _job(sweep, 0, "0.05", {"metrics": {"val/sts_spearman": 72.5, "train/loss": 0.5}, "global_step": 20,
                            "cost": {"sec_per_step": 9.0}})
    text = _module().main([str(sweep), "--metrics", "val/sts_spearman", "train/loss", "eval/stsb/spearman",
                           "--out", str(tmp_path / "out" / "tau")])
    rows = text.splitlines()
    assert rows[0] == f"Sweep: `{sweep}` (3 jobs, swept: objective.tau)"
    assert rows[2] == "| job | objective.tau | val/sts_spearman | train/loss | eval/stsb/spearman | s / step | steps |"
    assert rows[4] == "| 0 | 0.05 | 72.50 | 0.5000 | - | 9.00 | 20 |"
    assert rows[5] == "| 2 | 0.1 | 71.23 | 0.1235 | 70.00 | 8.50 | 20 |"
    assert rows[6] == "| 10 | 0.02 | unfinished | - | - | - | - |"
    assert (tmp_path / "out" / "tau.md").read_text() == text
    assert (tmp_path / "out" / "tau.png").stat().st_size > 1000
