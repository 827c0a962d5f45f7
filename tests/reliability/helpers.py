"""Shared pieces of the reliability tests: tiny training arguments, CSV losses, subprocess runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def tiny_train_args(model_dir, run_dir, max_steps: int = 6, every_n: int | None = 1, extra=()) -> list[str]:
    """A few-second-per-step text-only run: tiny model, batch 4, no validation, CSV losses."""
    args = [
        "experiment=text_only",
        "model.text_only=true",
        "val=stsb_dev",
        f"model.name_or_path={model_dir}",
        f"trainer.max_steps={max_steps}",
        "data.batch_size=4",
        "val=none",
        "validate_before_training=false",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    if every_n:
        # No validation here, so nothing to monitor: Lightning 2.6 defers step checkpoints until a
        # monitored metric exists, so monitor=null makes every_n_train_steps save from the first step.
        args += [f"callbacks.model_checkpoint.every_n_train_steps={every_n}", "callbacks.model_checkpoint.monitor=null"]
    return args + list(extra)


def cli_env() -> dict:
    # PYTHONPATH: lets configs name test-only callbacks (tests.reliability.killer).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


def run_cli(args: list[str], cwd=REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
    )


def csv_losses(run_dir) -> dict[int, float]:
    """train/loss by step from `<run>/csv/metrics.csv`; a resumed run appends, so later rows win."""
    losses = {}
    with open(Path(run_dir) / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses
