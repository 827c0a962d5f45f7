"""data/skipped sums over ranks: read-time skips (every rank reads the whole file) count once, batch skips
(each rank's own shard) count on every rank."""

from __future__ import annotations

from types import SimpleNamespace

from mmembed.errors import SkipCounter
from mmembed.lit.data_quality import DataQualityMonitor, rank_share


class _Module:
    def __init__(self):
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = (value, kwargs.get("reduce_fx"))


def _epoch_end(rank: int, read_skips: int, batch_skips: int) -> float:
    counter = SkipCounter()
    for i in range(read_skips):
        counter.add(f"row {i}", "unreadable")
    trainer = SimpleNamespace(datamodule=SimpleNamespace(skips=counter), current_epoch=0, global_rank=rank)
    monitor, module = DataQualityMonitor(), _Module()
    monitor.on_train_batch_end(trainer, module, None, {"skipped": batch_skips, "truncated": 0}, 0)
    monitor.on_train_epoch_end(trainer, module)
    value, reduce = module.logged["data/skipped"]
    assert reduce == "sum"
    return value


def test_two_ranks_log_read_skips_once_and_their_own_batch_skips():
    # 3 rows skipped while reading (seen by both ranks), 1 image skipped in rank 0's batches, 2 in rank 1's
    assert _epoch_end(0, 3, 1) + _epoch_end(1, 3, 2) == 3 + 1 + 2
    assert rank_share(3, 1, 0) == 4 and rank_share(3, 2, 1) == 2
