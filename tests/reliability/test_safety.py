"""Safe loading (no unpickling of user files, no remote code by default) and output-folder checks."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple

import pytest

from mmembed.errors import DataConfigError
from mmembed.run import training
from mmembed.run.folders import OutputDirError, ensure_writable, resolve_ckpt_path
from mmembed.run.training import run_training
from tests.conftest import REPO
from tests.pipeline.helpers import compose_train


@pytest.mark.parametrize("model", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_remote_code_is_off_by_default_in_every_model_config(model, tmp_path):
    assert compose_train([f"model={model}"], tmp_path).model.get("trust_remote_code", False) is False


# ---- output folder ----
def test_file_in_place_of_the_output_folder(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OutputDirError, match="taken.* is not writable"):
        ensure_writable(blocker / "run")


def _check_many_times(folder: str, times: int) -> int:
    for _ in range(times):
        ensure_writable(folder, min_free_bytes=0)
    return times


def test_every_rank_checks_the_same_output_folder_at_once(tmp_path):
    """DDP ranks all run ensure_writable on one folder at the same moment; with one shared probe name a rank
    unlinked the file another had just written (FileNotFoundError: the strategy matrix failed 1 run in 3)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_check_many_times, [(str(tmp_path / "run"), 300)] * 2) == [300, 300]
    assert list((tmp_path / "run").iterdir()) == []  # no probe left behind


def test_full_disk(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(OutputDirError, match="only 0.0 GiB free"):
        ensure_writable(tmp_path / "run")


def test_bad_output_folder_fails_before_data_or_model_load(tmp_path, monkeypatch):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    monkeypatch.setattr(training, "build_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = compose_train(["data.train_files=[/nonexistent.csv]"], blocker / "run")
    with pytest.raises(OutputDirError):
        run_training(cfg)


@pytest.mark.slow  # about 5 s alone; Python + Lightning start-up takes 20 s on a loaded 2-core machine
def test_cli_reports_an_unwritable_output_folder_without_traceback(tmp_path):
    from tests.reliability.helpers import run_cli

    blocker = tmp_path / "taken"
    blocker.write_text("")
    proc = run_cli([f"paths.output_dir={blocker}/run", f"hydra.run.dir={tmp_path}/hydra"])
    assert proc.returncode == 2
    assert "OutputDirError" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr + proc.stdout


# ---- resuming ----
def test_ckpt_path_last_needs_a_checkpoint_in_the_run_folder(tmp_path):
    cfg = compose_train([], tmp_path)
    with pytest.raises(DataConfigError, match=r"ckpt_path=last but .*checkpoints/last.ckpt does not exist.*hydra.run.dir"):
        resolve_ckpt_path("last", cfg, tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(None, cfg, tmp_path) is None
    with pytest.raises(DataConfigError, match="is not a file"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), cfg, tmp_path)


def test_wrong_resume_folder_fails_before_the_model_loads(tmp_path, monkeypatch, data_root):
    monkeypatch.setattr(training, "build_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = compose_train(["ckpt_path=last"], tmp_path)
    with pytest.raises(DataConfigError, match="ckpt_path=last"):
        run_training(cfg)


def test_checkpoint_with_code_is_refused_on_resume(tmp_path):
    """weights_only loading: a pickle that would run code is rejected, not executed."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    from lightning.fabric.utilities.cloud_io import _load as pl_load

    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        pl_load(path, weights_only=True)
    assert not (tmp_path / "pwned").exists()
