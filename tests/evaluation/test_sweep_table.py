"""experiments/sweep_table.py: one row per Hydra job, labelled by the swept parameters, unfinished jobs listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _module():
    return load_script("experiments/sweep_table.py")


def _job(sweep: Path, n: int, tau: str, summary: dict | None) -> None:
    hydra_dir = sweep / str(n) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"sweeper": {"params": {"objective.tau": "0.02,0.05,0.1"}}}}))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(
        ["ablation=unime_tau", "experiment=unime_stage1", f"objective.tau={tau}", "trainer.max_steps=20"]))
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


def _beta_k_job(sweep: Path, n: int, beta: str, k: str, fractions: list[float] | None, overall: float) -> None:
    hydra_dir = sweep / str(n) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"sweeper": {"params": {"objective.beta": "-0.1,0,0.1", "objective.k": "4,8"}}}}))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(
        [f"objective.beta={beta}", f"objective.k={k}", "experiment=unime_stage2"]))
    # the summary keeps the last step's value only; the table's mean: column reads every step from TensorBoard
    (sweep / str(n) / "train_summary.json").write_text(json.dumps(
        {"metrics": {"train/false_negative_fraction": (fractions or [0.0])[-1]}, "global_step": 3,
         "evaluation": {"metrics": {"eval/mini_mmeb/overall": overall}}, "cost": {"sec_per_step": 1.0}}))
    if fractions is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(sweep / str(n) / "tensorboard"))
        for step, value in enumerate(fractions):
            writer.add_scalar("train/false_negative_fraction", value, step)
            writer.add_scalar("train/loss", 10.0 + step, step)
        writer.close()


def test_run_mean_of_a_logged_scalar_and_a_beta_by_k_pivot(tmp_path):
    sweep = tmp_path / "sweep"
    _beta_k_job(sweep, 0, "-0.1", "4", [0.5, 0.25, 0.75], 12.0)
    _beta_k_job(sweep, 1, "0.1", "4", [0.0, 0.125, 0.0], 14.5)
    _beta_k_job(sweep, 2, "0", "8", [0.25, 0.25, 0.0], 13.0)
    _beta_k_job(sweep, 3, "-0.1", "8", None, 11.0)  # no event files: its mean is missing, not zero
    metrics = ["mean:train/false_negative_fraction", "train/false_negative_fraction", "eval/mini_mmeb/overall"]
    text = _module().main([str(sweep), "--metrics", *metrics, "--pivot", "objective.beta", "objective.k"])
    lines = text.splitlines()
    assert lines[4] == "| 0 | -0.1 | 4 | 0.5000 | 0.7500 | 12.00 | 1.00 | 3 |"  # (0.5 + 0.25 + 0.75) / 3
    assert lines[5] == "| 1 | 0.1 | 4 | 0.0417 | 0.0000 | 14.50 | 1.00 | 3 |"
    assert lines[7] == "| 3 | -0.1 | 8 | - | 0.0000 | 11.00 | 1.00 | 3 |"
    pivot = text[text.index("mean:train/false_negative_fraction (objective.beta down"):]
    grid = pivot.splitlines()
    # beta sorted as numbers (-0.1, 0, 0.1), k as numbers; a combination the sweep lacks is "-"
    assert grid[2] == "| objective.beta \\ objective.k | 4 | 8 |"
    assert grid[4:7] == ["| -0.1 | 0.5000 | - |", "| 0 | - | 0.1667 |", "| 0.1 | 0.0417 | - |"]
    overall = text[text.index("eval/mini_mmeb/overall (objective.beta down"):].splitlines()
    assert overall[4:7] == ["| -0.1 | 12.00 | 11.00 |", "| 0 | - | 13.00 |", "| 0.1 | 14.50 | - |"]


def test_a_pivot_over_a_key_the_sweep_does_not_vary_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    _beta_k_job(sweep, 0, "0", "4", [0.5], 12.0)
    with pytest.raises(SystemExit, match="objective.tau"):
        _module().main([str(sweep), "--metrics", "eval/mini_mmeb/overall", "--pivot", "objective.beta", "objective.tau"])
