"""A seeded shuffle that can resume mid-epoch, and a DataLoader that saves its position.

The order of epoch `e` is a function of (seed, e) only, so a resumed run sees exactly the batches
an uninterrupted run would. `ResumableDataLoader` exposes `state_dict` / `load_state_dict`, the
interface Lightning uses to save a training loader's position in its checkpoints and restore it
before iterating (without it, Lightning restarts the interrupted epoch from its first batch).
Plain PyTorch: no Lightning import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


class ResumableRandomSampler(Sampler[int]):
    """A fresh permutation of range(n) per epoch, seeded by (seed, epoch); can start at a batch offset.

    `progress`, when set, returns how many batches of the current epoch training has consumed (the
    trainer's count); otherwise the sampler's own count is used, which runs ahead when DataLoader
    workers prefetch.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int):
        self.num_samples, self.seed, self.batch_size = int(num_samples), int(seed), int(batch_size)
        self.epoch = 0
        self.progress: Callable[[], int] | None = None
        self._start_batch = 0  # batches to skip when the next iteration starts (set by load_state_dict)
        self._yielded = 0

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start_batch = 0  # a resume offset belongs to the epoch it was saved in
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        start = self._start_batch * self.batch_size
        self._start_batch = 0
        self._yielded = start
        for index in order[start:]:
            self._yielded += 1
            yield index

    def __len__(self) -> int:
        # The full epoch, also when resuming: the trainer's batch counter continues from the resume point.
        return self.num_samples

    def state_dict(self) -> dict:
        batches = self.progress() if self.progress is not None else self._yielded // self.batch_size
        return {"epoch": self.epoch, "batches": int(batches), "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("num_samples") != self.num_samples:
            log.warning(
                "resuming with different data or seed (saved: %s samples, seed %s; now: %s, %s): "
                "the batch order after the resume point differs from the interrupted run",
                state.get("num_samples"), state.get("seed"), self.num_samples, self.seed,
            )
        self.epoch = int(state["epoch"])
        self._start_batch = int(state["batches"])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position is its sampler's (`state_dict` / `load_state_dict`)."""

    def state_dict(self) -> dict:
        sampler = self.sampler
        return sampler.state_dict() if hasattr(sampler, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state)
