"""`-m ablation=modality_ablation` end to end through the CLI: six jobs trained, evaluated and tabulated.

Its own file (not tests/pipeline/test_configs.py) because it is one of the two longest tests: `make test` runs files
on parallel workers (`--dist loadfile`), and the two share no worker this way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline.helpers import run_train_cli
from tests.scripts import load_script


@pytest.mark.slow
def test_modality_ablation_sweep_runs_six_jobs_and_tabulates(tiny_smol_llava_dir, tmp_path):
    """`-m ablation=modality_ablation`: {text_only, image_text} x seeds {1, 2, 3}, each trained and
    evaluated; the experiments script turns the sweep folder into the table and the plot."""
    small_eval = ["evaluation.benchmarks.flickr8k_1k_test.max_images=6", "evaluation.modality_gap.max_images=6",
                  # eval=modality_ablation has no STS12 / SICK-R already (null: ~ cannot delete them)
                  *[f"~evaluation.benchmarks.{b}" for b in ("cirr_local", "imagenet1k")],
                  "evaluation.benchmarks.stsb.split=dev", "evaluation.progress=false"]
    result = run_train_cli(
        ["-m", "ablation=modality_ablation", f"model.name_or_path={tiny_smol_llava_dir}", "trainer.max_steps=2",
         "data.batch_size=4", "val.sets.stsb_dev.limit=8", "val.sets.stsb_dev.batch_size=8", *small_eval, f"hydra.sweep.dir={tmp_path}/sweep"],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(Path(tmp_path, "sweep").glob("*/train_summary.json"))
    assert len(jobs) == 6
    summaries = [json.loads(j.read_text()) for j in jobs]
    # both arms keep the frozen tower (image validation); only the image_text arm trains on images
    assert [s["objective"] for s in summaries] == ["TextPairInfoNCE"] * 3 + ["ImageTextInfoNCE"] * 3
    assert all("eval/stsb/spearman" in s["evaluation"]["metrics"] for s in summaries)
    assert all((j.parent / "eval" / "modality_gap.png").is_file() for j in jobs)

    text = load_script("experiments/modality_ablation.py").main([str(tmp_path / "sweep"), "--out", str(tmp_path / "table")])
    assert "text_only (mean ± sd, seeds 1, 2, 3)" in text and "image_text (mean ± sd, seeds 1, 2, 3)" in text
    # text_only keeps its frozen tower now, for image validation (model.text_only=true val=stsb_dev drops it)
    assert "| vision tower in memory | True | True |" in text
    assert (tmp_path / "table.png").is_file()
