"""Test-only callbacks. SigkillAtStep: the training process SIGKILLs itself at a chosen step (no cleanup, no atexit).

Used as `+callbacks.killer._target_=tests.reliability.killer.SigkillAtStep +callbacks.killer.step=3`:
the kill lands in `on_train_batch_start` of the batch after `step` optimizer steps, i.e. mid-epoch,
after `last.ckpt` of step `step` was saved and before the next step finishes.
"""

from __future__ import annotations

import errno
import os
import signal

import lightning as L


class SigkillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNFromStep(L.Callback):
    """Test-only: from global step `step` on, the embedder returns NaN embeddings (a numerical fault)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_start(self, trainer, pl_module) -> None:
        embedder = pl_module.embedder
        forward = embedder.forward

        def faulty(*args, **kwargs):
            out = forward(*args, **kwargs)
            return out * float("nan") if trainer.global_step >= self.step else out

        embedder.forward = faulty


class DiskFullFromStep(L.Callback):
    """Test-only: from global step `step` on, every checkpoint write fails the way torch.save fails on
    a full disk (a RuntimeError raised while handling OSError ENOSPC), after writing part of the file."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.step:
            return
        from mmembed.lit.checkpoint_io import AtomicCheckpointIO

        def full_disk(checkpoint, f):
            f.write(b"PK\x03\x04 part of a zip file")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904 (as torch does)

        AtomicCheckpointIO._write = staticmethod(full_disk)
