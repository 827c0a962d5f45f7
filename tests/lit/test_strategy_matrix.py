"""Recipes that used to fail under DDP at their second step (a trainable part that never gets a gradient:
MM-GEM's unused head or [EMB] row in each conflict arm) train 2 steps under 2-process `trainer=ddp` (gloo on
CPU) through the real `src/train.py`; so does projector alignment (its trainable-projector path; the tiny model's
projector is an MLP: the label-word head's freezing is tested in tests/models/smol_llava)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.distributed import ddp_subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

RECIPES = {
    "align": ["experiment=align"],
    "mmgem_embedding_only": ["experiment=mmgem", "arm=embedding_only", "lora.r=4"],
    "mmgem_captioning_only": ["experiment=mmgem", "arm=captioning_only", "lora.r=4"],
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_two_steps_under_ddp(recipe, tiny_smol_llava_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([
        sys.executable, str(REPO / "src" / "train.py"), *RECIPES[recipe], "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", "trainer.max_steps=2", "data.batch_size=2",
        "data.train_limit=8", "val=none", "validate_before_training=false", "~logger",
        f"model.name_or_path={tiny_smol_llava_dir}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
    ], cwd=REPO, env=ddp_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((run_dir / "train_summary.json").read_text())["global_step"] == 2
