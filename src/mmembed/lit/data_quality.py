"""Logs what the data policy dropped or cut, once per training epoch.

- `data/skipped`: inputs skipped under `data.on_error=skip`: the rows the datamodule dropped while
  reading (`datamodule.skips`, a `SkipCounter`) plus any `batch["skipped"]` a collator reports
  (e.g. images that failed to load inside DataLoader workers, whose counters live in other processes);
- `data/truncated`: texts cut to `data.max_text_tokens` in this epoch (`batch["truncated"]`).

Lightning also calls `on_train_epoch_end` when `trainer.max_steps` stops a run inside an epoch, so
iteration-based runs log their partial last epoch too.

The first epoch's log line also names the first few skipped rows and the reasons.
"""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


def rank_share(at_read: int, in_batches: int, rank: int) -> int:
    """This rank's part of the global skip count, which the log sums over ranks: every rank reads the whole
    training file (the same read-time skips on each), but loads only its own shard's batches."""
    return (at_read if rank == 0 else 0) + in_batches


class DataQualityMonitor(L.Callback):
    def __init__(self) -> None:
        self.batch_skipped = 0
        self.truncated = 0
        self.history: list[dict] = []  # one entry per finished epoch (tests and summaries read it)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batch_skipped = 0
        self.truncated = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            self.batch_skipped += int(batch.get("skipped", 0))
            self.truncated += int(batch.get("truncated", 0))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counter = getattr(trainer.datamodule, "skips", None) if trainer.datamodule is not None else None
        at_read = counter.count if counter is not None else 0
        entry = {"epoch": trainer.current_epoch, "skipped": at_read + self.batch_skipped, "truncated": self.truncated}
        self.history.append(entry)
        pl_module.log("data/skipped", float(rank_share(at_read, self.batch_skipped, trainer.global_rank)),
                      on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        pl_module.log("data/truncated", float(entry["truncated"]), on_step=False, on_epoch=True, sync_dist=True,
                      reduce_fx="sum")
        if entry["skipped"] and len(self.history) == 1 and counter is not None:
            log.warning("data: %s", counter.summary())
