"""Test-only callbacks. SigkillAtStep: the training process SIGKILLs itself at a chosen step (no cleanup, no atexit).

Used as `+callbacks.killer._target_=tests.reliability.killer.SigkillAtStep +callbacks.killer.step=3`:
the kill lands in `on_train_batch_start` of the batch after `step` optimizer steps, i.e. mid-epoch,
after `last.ckpt` of step `step` was saved and before the next step finishes.
"""

from __future__ import annotations

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
