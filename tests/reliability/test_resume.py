"""Interruption: a run killed with SIGKILL mid-epoch resumes from last.ckpt and continues exactly.

Tolerance: the losses after the resume point must equal the uninterrupted run's to 1e-6 relative
(same machine, same thread count); in practice they are bit-identical (see docs/reliability.md).
"""

from __future__ import annotations

import math
import signal

import pytest
import torch

from tests.reliability.helpers import csv_losses, run_cli, tiny_train_args

RTOL = 1e-6


def _step_of(ckpt) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # written atomically, so this is only "not there yet"
        return -1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_smol_llava_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = run_cli(tiny_train_args(tiny_smol_llava_dir, full))
    assert done.returncode == 0, done.stderr[-3000:]
    reference = csv_losses(full)
    assert sorted(reference) == list(range(6))

    # The run SIGKILLs itself when step 4 starts (after last.ckpt of step 3 was written).
    kill = ["+callbacks.killer._target_=tests.reliability.killer.SigkillAtStep", "+callbacks.killer.step=3"]
    interrupted = run_cli(tiny_train_args(tiny_smol_llava_dir, killed, extra=kill))
    assert interrupted.returncode == -signal.SIGKILL, interrupted.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    resume_step = _step_of(last)
    assert resume_step == 3
    before_kill = csv_losses(killed)
    assert sorted(before_kill) == [0, 1, 2]  # the killed run logged steps 0..2 only
    # The data loader saved its position: the resumed epoch continues at this batch.
    state = torch.load(last, map_location="cpu", weights_only=True)
    # 5,396: the 5,864 SNLI triplets minus the 468 that hold an evaluation sentence (conf/heldout)
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": resume_step, "seed": 42, "num_samples": 5396}
    ]

    resumed = run_cli(tiny_train_args(tiny_smol_llava_dir, killed, extra=["ckpt_path=last"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    after_resume = csv_losses(killed)  # Lightning's CSVLogger starts a new file on resume
    assert sorted(after_resume) == [3, 4, 5]
    got = {**before_kill, **after_resume}
    for step in range(6):  # before the kill: same seed, same losses; after: the resumed run's
        assert math.isclose(got[step], reference[step], rel_tol=RTOL, abs_tol=0), (step, got, reference)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6

    # The final adapters (what evaluation loads) are the uninterrupted run's too.
    from safetensors.torch import load_file

    a = load_file(str(full / "adapters" / "last" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapters" / "last" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
