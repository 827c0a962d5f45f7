"""Numerical faults stop training with the step named and the last good checkpoint kept; runs are
deterministic (same seed, same data -> same losses and embeddings on CPU); skips are logged."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

from tests.conftest import DATA_ROOT
from tests.pipeline.helpers import compose_train
from tests.reliability.helpers import csv_losses, run_cli, tiny_train_args


@pytest.mark.slow
def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_smol_llava_dir, tmp_path):
    run, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    nan = ["+callbacks.nan._target_=tests.reliability.killer.NaNFromStep", "+callbacks.nan.step=3"]
    proc = run_cli(tiny_train_args(tiny_smol_llava_dir, run, extra=nan), cwd=cwd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # every output lives under the run folder, nothing in the working dir
    assert {p.name for p in run.iterdir()} <= {".hydra", "train.log", "checkpoints", "csv", "adapters", "cost.json"}
    out = proc.stdout + proc.stderr
    assert "NonFiniteLossError: non-finite training loss (nan) at global step 3" in out
    assert "Traceback" not in out  # a user-facing message, not a stack trace
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["state_dict"] and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert sorted(csv_losses(run)) == [0, 1, 2]  # no NaN was ever logged as a loss


def _train_file(tmp_path):
    lines = (DATA_ROOT / "nli" / "snli_dev_simcse_triplets.csv").read_text().splitlines()[:41]
    bad = [",only a positive,neg", "anchor,,neg"]  # skipped and counted
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines[:1] + bad + lines[1:]) + "\n")
    return path


def _run(tiny_dir, tmp_path, name):
    from mmembed.run.training import run_training

    cfg = compose_train(
        tiny_train_args(tiny_dir, "unused", max_steps=3, every_n=None)[:-1]
        + [f"data.train_files=[{_train_file(tmp_path)}]", "data.max_text_tokens=6"],
        tmp_path / name,
    )
    summary = run_training(cfg)
    return summary, csv_losses(tmp_path / name)


def _embed(tiny_dir, adapter, texts):
    from tests.pipeline.helpers import build_embedder

    cfg = compose_train([f"model.name_or_path={tiny_dir}", f"adapter={adapter}", "merge_adapter=false"], "unused")
    with torch.no_grad():
        return build_embedder(cfg).eval().encode_text(texts)


@pytest.mark.slow
def test_same_seed_same_losses_and_embeddings_and_skips_are_logged(tiny_smol_llava_dir, tmp_path):
    a, losses_a = _run(tiny_smol_llava_dir, tmp_path, "a")
    b, losses_b = _run(tiny_smol_llava_dir, tmp_path, "b")
    assert sorted(losses_a) == [0, 1, 2] and losses_a == losses_b  # bit-identical on CPU
    assert all(math.isfinite(v) for v in losses_a.values())
    texts = ["A woman is slicing an onion.", "A man is playing the flute."]
    ea = _embed(tiny_smol_llava_dir, tmp_path / "a" / "adapters" / "last", texts)
    eb = _embed(tiny_smol_llava_dir, tmp_path / "b" / "adapters" / "last", texts)
    assert torch.equal(ea, eb)

    # data/skipped and data/truncated, per epoch, in the summary and the logger.
    assert a["data_quality"][0]["skipped"] == 2
    assert a["data_quality"][0]["truncated"] > 0
    assert a["metrics"]["data/skipped"] == 2.0
    metrics = (tmp_path / "a" / "csv" / "metrics.csv").read_text()
    assert "data/skipped" in metrics.splitlines()[0]


@pytest.mark.slow
def test_a_different_seed_changes_the_losses(tiny_smol_llava_dir, tmp_path):
    """The contrast that shows the determinism test can fail."""
    from mmembed.run.training import run_training

    losses = []
    for seed in (1, 2):
        cfg = compose_train(
            tiny_train_args(tiny_smol_llava_dir, "unused", max_steps=2, every_n=None)[:-1] + [f"seed={seed}"],
            tmp_path / str(seed),
        )
        with open_dict(cfg):
            cfg.callbacks = {}
        run_training(cfg)
        losses.append(csv_losses(tmp_path / str(seed)))
    assert losses[0] != losses[1]


@pytest.mark.slow
def test_disk_filling_during_training_is_reported_without_traceback_and_keeps_the_last_checkpoint(
    tiny_smol_llava_dir, tmp_path
):
    run = tmp_path / "run"
    full = ["+callbacks.full._target_=tests.reliability.killer.DiskFullFromStep", "+callbacks.full.step=2"]
    proc = run_cli(tiny_train_args(tiny_smol_llava_dir, run, extra=full), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    last = run / "checkpoints" / "last.ckpt"
    assert (
        f"OutputDirError: the disk holding {run} filled up during training (No space left on device); "
        f"the last complete checkpoint is intact: {last}. Free space, then resume with the same overrides "
        f"plus hydra.run.dir={run} ckpt_path=last"
    ) in out
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
    # step 2's checkpoints are whole; the partial temp file of the failed step-3 save is gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-2.ckpt"]


def test_disk_full_cause_finds_the_errno_behind_torch_save_errors():
    import errno

    from mmembed.run.folders import disk_full_cause

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598")  # noqa: B904 (what torch.save raises)
    except RuntimeError as err:
        found = disk_full_cause(err)
    assert found is not None and found.errno == errno.ENOSPC
    assert disk_full_cause(RuntimeError("unexpected pos")) is None
    assert disk_full_cause(OSError(errno.EACCES, "Permission denied")) is None
