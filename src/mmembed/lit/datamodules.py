"""DataModules: training rows for any objective, validated on STS-B dev Spearman (the same number for every arm).

A DataModule is built with the model's `Featurizer` (tokenizer, processor, prompt renderer; no weights)
and the run's objective, before the model loads: `check_data()` then reads every training and
validation file, so a wrong path, column or empty file is reported in seconds, not after the model has
loaded. The DataLoader's `collate_fn` is an `ObjectiveCollator` (mmembed.data.collate): workers carry
the featurizer and the objective, never the model.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmembed.data.collate import ObjectiveCollator, TextPairRows
from mmembed.data.heldout import drop_heldout_rows, heldout_sentences
from mmembed.data.sampling import ResumableDataLoader, ResumableRandomSampler
from mmembed.data.text_pairs import load_text_pairs
from mmembed.errors import DataConfigError, SkipCounter


class StsValidatedDataModule(L.LightningDataModule):
    """What every training DataModule shares: seeded resumable shuffling, the bad-input policy, the
    objective's collator, and STS-B validation pairs."""

    def __init__(
        self,
        featurizer=None,
        objective=None,
        batch_size: int = 16,
        max_text_tokens: int | None = 32,
        shuffle_seed: int = 42,
        num_workers: int = 0,
        on_error: str = "skip",
        train_limit: int | None = None,
        val_sts_dir: str | None = None,
        val_split: str = "dev",
        val_limit: int | None = None,
        val_batch_size: int = 64,
        heldout: Mapping[str, Mapping] | None = None,
    ):
        super().__init__()
        # Evaluation sets (conf/heldout) whose sentences no training row may hold: such rows are dropped.
        self.heldout, self.heldout_dropped = heldout, 0
        if on_error not in ("skip", "raise"):
            raise DataConfigError(f"data.on_error={on_error!r}: expected skip or raise")
        self.featurizer, self.objective = featurizer, objective
        self.batch_size, self.val_batch_size, self.max_text_tokens = batch_size, val_batch_size, max_text_tokens
        self.shuffle_seed, self.num_workers, self.on_error = shuffle_seed, num_workers, on_error
        self.train_limit, self.val_sts_dir, self.val_split, self.val_limit = train_limit, val_sts_dir, val_split, val_limit
        self.train_set = self.val_set = None
        self.skips = SkipCounter()  # rows dropped while reading (data.on_error=skip), logged as data/skipped

    # ---- what a concrete DataModule provides ----
    def check_paths(self) -> None:
        """Configured local paths exist (subclasses add their training files)."""
        if self.val_sts_dir and not Path(self.val_sts_dir).is_dir():
            raise DataConfigError(
                f"data.val_sts_dir={self.val_sts_dir!r} does not exist (an STS-B folder with sts-{self.val_split}.csv). "
                "Set the data root (env MMEMBED_DATA / paths.data_root) or data.val_sts_dir=null to skip validation"
            )

    def read_train_set(self):
        raise NotImplementedError

    def row_preparer(self):
        raise NotImplementedError

    # ---- shared ----
    def without_heldout(self, rows, columns: list[str]):
        """The training rows minus those holding an evaluation sentence (their number: `heldout_dropped`)."""
        rows, self.heldout_dropped = drop_heldout_rows(rows, columns, heldout_sentences(self.heldout))
        return rows

    def check_data(self) -> None:
        """Read every training and validation file now (formats, columns, empty files): run before the
        model loads, so bad data costs seconds."""
        self.check_paths()
        if self.objective is not None and self.objective.row_kind != self.row_preparer_kind:
            raise DataConfigError(
                f"objective {type(self.objective).__name__} reads {self.objective.row_kind!r} rows but "
                f"{type(self).__name__} gives {self.row_preparer_kind!r} rows: pick matching objective= and data="
            )
        self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            ds = self.read_train_set()
            if self.train_limit:
                ds = ds.select(range(min(self.train_limit, len(ds)))) if hasattr(ds, "select") else ds[: self.train_limit]
            if len(ds) < self.batch_size:
                raise DataConfigError(
                    f"{len(ds)} training rows but data.batch_size={self.batch_size}: no full batch to train on"
                )
            self.train_set = ds
        if self.val_set is None and self.val_sts_dir and stage in (None, "fit", "validate"):
            self.val_set = _sts_validation_rows(self.val_sts_dir, self.val_split, self.val_limit, self.shuffle_seed)

    def train_collator(self) -> ObjectiveCollator:
        if self.featurizer is None or self.objective is None:
            raise RuntimeError("build the DataModule with featurizer= and objective= (the run modules do)")
        return ObjectiveCollator(self.row_preparer(), self.objective, self.featurizer)

    def train_dataloader(self) -> DataLoader:
        collate = self.train_collator()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # Lightning swaps in a DistributedSampler (seeded per epoch); mid-epoch resume restarts the epoch.
            generator = torch.Generator().manual_seed(self.shuffle_seed)
            return DataLoader(
                self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                generator=generator, collate_fn=collate, num_workers=self.num_workers,
            )
        # The order of each epoch depends on (seed, epoch) only, and the loader saves its position in
        # Lightning checkpoints, so a run resumed mid-epoch continues with the very next batch.
        sampler = ResumableRandomSampler(len(self.train_set), self.shuffle_seed, self.batch_size)
        if trainer is not None:
            sampler.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,  # every step sees the same number of in-batch negatives
            # Its own generator: creating an iterator must not draw from the global RNG (dropout's).
            generator=torch.Generator().manual_seed(self.shuffle_seed),
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self):
        if not self.val_set:
            return []
        return DataLoader(self.val_set, batch_size=self.val_batch_size, collate_fn=StsCollator(self.featurizer),
                          num_workers=0)


class StsCollator:
    """STS rows {s1, s2, score, id} -> both sides featurised with the text prompt."""

    def __init__(self, featurizer):
        self.featurizer = featurizer

    def __call__(self, rows: list[dict]) -> dict:
        return {
            "inputs1": self.featurizer.featurize_text([r["s1"] for r in rows]),
            "inputs2": self.featurizer.featurize_text([r["s2"] for r in rows]),
            "scores": torch.tensor([r["score"] for r in rows], dtype=torch.float32),
            "ids": torch.tensor([r["id"] for r in rows], dtype=torch.long),
        }


class TextPairDataModule(StsValidatedDataModule):
    """Training on `sent0,sent1[,hard_neg]` files (E5-V's text-only recipe)."""

    row_preparer_kind = TextPairRows.row_kind

    def __init__(self, train_files: Sequence[str] | str, **kwargs):
        super().__init__(**kwargs)
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files)

    def check_paths(self) -> None:
        missing = [f for f in self.train_files if Path(f).suffix and not Path(f).expanduser().is_file()]
        if missing:
            raise DataConfigError(
                f"training file(s) not found: {missing}. Set data.train_files, or the data root "
                "(env MMEMBED_DATA / paths.data_root) so it points at the folder holding them"
            )
        super().check_paths()

    def read_train_set(self):
        rows = load_text_pairs(self.train_files, on_error=self.on_error, skips=self.skips)
        return self.without_heldout(rows, rows.column_names)

    def row_preparer(self) -> TextPairRows:
        return TextPairRows(self.featurizer, self.max_text_tokens)


def _sts_validation_rows(folder: str, split: str, limit: int | None, seed: int) -> list[dict]:
    from mmembed.data.evalsets.sts import read_stsb

    try:
        pairs = read_stsb(folder, split=split)
    except (OSError, ValueError, KeyError) as err:
        raise DataConfigError(f"data.val_sts_dir={folder!r}: cannot read its sts-{split} file: {err}") from err
    rows = [
        {"s1": a, "s2": b, "score": float(s), "id": i}
        for i, (a, b, s) in enumerate(zip(pairs.sentences1, pairs.sentences2, pairs.scores))
    ]
    if not rows:
        raise DataConfigError(f"data.val_sts_dir={folder!r}: sts-{split} has no pairs")
    if limit and limit < len(rows):
        # A fixed random subset (not the first rows, which are all from one source genre).
        rows = random.Random(seed).sample(rows, limit)
    return rows
