"""Checkpoints are written atomically: a crash or kill inside a save never leaves a corrupt last.ckpt."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mmembed.lit.checkpoint_io import AtomicCheckpointIO, collect_rng_states, set_rng_states
from tests.conftest import REPO

STATE = {"state_dict": {"w": torch.arange(1000.0)}, "global_step": 2}


def test_exception_inside_the_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(STATE, target)

    def crash(checkpoint, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk went away")

    monkeypatch.setattr(AtomicCheckpointIO, "_write", staticmethod(crash))
    with pytest.raises(OSError, match="disk went away"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 3}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], STATE["state_dict"]["w"])
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # the temp file was removed


KILLED_MID_WRITE = """
import os, sys, torch
from mmembed.lit.checkpoint_io import AtomicCheckpointIO
target = sys.argv[1]
io = AtomicCheckpointIO()
io.save_checkpoint({"global_step": 2, "w": torch.arange(1000.0)}, target)

def die(checkpoint, f):
    f.write(b"PK\\x03\\x04 half a zip file")
    f.flush()
    os._exit(9)  # like SIGKILL: no exception handlers, no cleanup

if sys.argv[2] == "atomic":
    AtomicCheckpointIO._write = staticmethod(die)
    io.save_checkpoint({"global_step": 3, "w": torch.zeros(3)}, target)
else:  # what a plain open(target, "wb") + torch.save would leave behind
    with open(target, "wb") as f:
        die(None, f)
"""


@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_process_killed_inside_a_save(tmp_path, mode):
    target = tmp_path / "last.ckpt"
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(KILLED_MID_WRITE))
    proc = subprocess.run([sys.executable, str(script), str(target), mode], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    if mode == "atomic":
        assert torch.load(target, weights_only=True)["global_step"] == 2
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.")]
        assert len(leftovers) == 1  # a stray temp file at worst, never a broken last.ckpt
    else:  # the contrast that makes the atomic test meaningful
        with pytest.raises(Exception):
            torch.load(target, weights_only=True)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    AtomicCheckpointIO().save_checkpoint({"rng": collect_rng_states()}, tmp_path / "c.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    set_rng_states(torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
