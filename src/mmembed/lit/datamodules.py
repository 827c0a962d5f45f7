"""DataModules: SimCSE-style text pairs for training, STS pairs for validation."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmembed.data.sampling import ResumableDataLoader, ResumableRandomSampler
from mmembed.data.text_pairs import DataConfigError, TextPairCollator, load_text_pairs
from mmembed.errors import SkipCounter
from mmembed.models.prompts import truncate_to_tokens


class StsValidatedDataModule(L.LightningDataModule):
    """What every training DataModule shares: seeded resumable shuffling, text truncation, the
    bad-input policy, and validation on STS-B (dev) Spearman (the same number for every arm).

    The featurizers come from the embedder once the model is loaded (`bind_embedder`), so collators
    render prompts with the very functions evaluation uses.
    """

    def __init__(
        self,
        featurize: Callable | None = None,
        tokenizer=None,
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
    ):
        super().__init__()
        if on_error not in ("skip", "raise"):
            raise DataConfigError(f"data.on_error={on_error!r}: expected skip or raise")
        self.featurize, self.tokenizer = featurize, tokenizer
        self.batch_size, self.val_batch_size, self.max_text_tokens = batch_size, val_batch_size, max_text_tokens
        self.shuffle_seed, self.num_workers, self.on_error = shuffle_seed, num_workers, on_error
        self.train_limit, self.val_sts_dir, self.val_split, self.val_limit = train_limit, val_sts_dir, val_split, val_limit
        self.train_set = self.val_set = None
        self.skips = SkipCounter()  # rows dropped while reading (data.on_error=skip), logged as data/skipped

    def bind(self, featurize: Callable, tokenizer) -> StsValidatedDataModule:
        """Attach the embedder's text featurizer and tokenizer (known only once the model is loaded)."""
        self.featurize, self.tokenizer = featurize, tokenizer
        return self

    def bind_embedder(self, embedder, **_) -> StsValidatedDataModule:
        return self.bind(embedder.featurize_text, embedder.backbone.tokenizer)

    def check_paths(self) -> None:
        """Fail fast, before any model is loaded, when a configured local path is missing."""
        if self.val_sts_dir and not Path(self.val_sts_dir).is_dir():
            raise DataConfigError(
                f"data.val_sts_dir={self.val_sts_dir!r} does not exist (an STS-B folder with sts-{self.val_split}.csv). "
                "Set the data root (env MMEMBED_DATA / paths.data_root) or data.val_sts_dir=null to skip validation"
            )

    def read_train_set(self):
        raise NotImplementedError

    def train_collator(self) -> Callable:
        raise NotImplementedError

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
        return DataLoader(self.val_set, batch_size=self.val_batch_size, collate_fn=self._collate_sts, num_workers=0)

    def _truncate(self, texts: Sequence[str]) -> list[str]:
        return truncate_to_tokens(texts, self.tokenizer, self.max_text_tokens)

    def _collate_sts(self, rows: list[dict]) -> dict:
        return {
            "inputs1": self.featurize([r["s1"] for r in rows]),
            "inputs2": self.featurize([r["s2"] for r in rows]),
            "scores": torch.tensor([r["score"] for r in rows], dtype=torch.float32),
            "ids": torch.tensor([r["id"] for r in rows], dtype=torch.long),
        }


class TextPairDataModule(StsValidatedDataModule):
    """Training on `sent0,sent1[,hard_neg]` files (E5-V's text-only recipe)."""

    def __init__(self, train_files: Sequence[str] | str, use_hard_negatives: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.train_files = [train_files] if isinstance(train_files, str) else list(train_files)
        self.use_hard_negatives = use_hard_negatives

    def check_paths(self) -> None:
        missing = [f for f in self.train_files if Path(f).suffix and not Path(f).expanduser().is_file()]
        if missing:
            raise DataConfigError(
                f"training file(s) not found: {missing}. Set data.train_files, or the data root "
                "(env MMEMBED_DATA / paths.data_root) so it points at the folder holding them"
            )
        super().check_paths()

    def read_train_set(self):
        return load_text_pairs(self.train_files, on_error=self.on_error, skips=self.skips)

    def train_collator(self) -> Callable:
        return TextPairCollator(self.featurize, self._truncate, self.use_hard_negatives)


def _sts_validation_rows(folder: str, split: str, limit: int | None, seed: int) -> list[dict]:
    from mmembed.data.benchmarks.sts import read_stsb

    pairs = read_stsb(folder, split=split)
    rows = [
        {"s1": a, "s2": b, "score": float(s), "id": i}
        for i, (a, b, s) in enumerate(zip(pairs.sentences1, pairs.sentences2, pairs.scores))
    ]
    if limit and limit < len(rows):
        # A fixed random subset (not the first rows, which are all from one source genre).
        rows = random.Random(seed).sample(rows, limit)
    return rows
