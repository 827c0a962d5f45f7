"""The one DataModule: training rows of any data source (mmembed.data.sources), the validation sets (conf/val/).

`data=<name>` names this class and its source by `_target_` (conf/data/*.yaml). The DataModule's own
settings are the policy every kind of data shares (batch size, seeded resumable shuffling, `on_error`,
`train_limit`, the held-out filter, text cut); every other `data.<key>` is a setting of the source
(`data.train_files`, `data.sources`, `data.image_root`, ...), passed to its constructor.

It is built with the model's `Featurizer` (tokenizer, processor, prompt renderer; no weights) and the
run's objective, before the model loads: `check_data()` then reads every training and validation file,
so a wrong path, column or empty file is reported in seconds, not after the model has loaded. The
DataLoader's `collate_fn` is an `ObjectiveCollator` (mmembed.data.collate): workers carry the featurizer,
the objective and the source's row preparer, never the model.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmembed.data.collate import ObjectiveCollator
from mmembed.data.heldout import drop_heldout_images, heldout_sentences
from mmembed.data.sampling import ResumableDataLoader, ResumableRandomSampler
from mmembed.errors import DataConfigError, SkipCounter
from mmembed.lit.validation import ValidationSets


class TrainingDataModule(L.LightningDataModule):
    """Any source's rows, seeded and resumable shuffled into full batches for the objective's collator; one
    validation dataloader per set of `val_sets` (mmembed.lit.validation), whose sentences and images never train.
    Attributes other code reads: `featurizer`, `max_text_tokens`, `train_files`
    (the source's, if any), `train_set`, `skips`, `heldout_dropped`, `row_kind`."""

    def __init__(
        self,
        source,
        featurizer=None,
        objective=None,
        batch_size: int = 16,
        max_text_tokens: int | None = 32,
        shuffle_seed: int = 42,
        num_workers: int = 0,
        on_error: str = "skip",
        train_limit: int | None = None,
        val_sets: Mapping[str, Mapping] | None = None,
        heldout: Mapping[str, Mapping] | None = None,
        **source_settings,
    ):
        """`source`: a data source, or its class (a Hydra `_partial_`) built here from `source_settings`."""
        super().__init__()
        if on_error not in ("skip", "raise"):
            raise DataConfigError(f"data.on_error={on_error!r}: expected skip or raise")
        self.source = build_source(source, source_settings)
        # Evaluation sets (conf/heldout) whose sentences no training row may hold: such rows are dropped.
        self.heldout, self.heldout_dropped = heldout, 0
        self.featurizer, self.objective = featurizer, objective
        self.batch_size, self.max_text_tokens = batch_size, max_text_tokens
        self.shuffle_seed, self.num_workers, self.on_error = shuffle_seed, num_workers, on_error
        self.train_limit = train_limit
        # Validation is a separable piece (conf/val/: `val=...` reaches here as data.val_sets); none: val=none.
        self.validation = ValidationSets(val_sets, shuffle_seed, on_error) if val_sets else None
        self.train_set = None
        self.skips = SkipCounter()  # rows dropped while reading (data.on_error=skip), logged as data/skipped

    @property
    def row_kind(self) -> str:
        """The rows this data gives; the objective's `row_kind` must be the same."""
        return self.source.row_kind

    row_preparer_kind = row_kind  # its former name

    @property
    def train_files(self) -> list[str] | None:
        """The source's training files, for objectives that key a cache by them (None: not a file source)."""
        return getattr(self.source, "train_files", None)

    def read_train_set(self):
        """Every training row minus those holding an evaluation or validation sentence or a validation image
        (their number: `heldout_dropped`)."""
        sources = dict(self.heldout or {})
        if self.validation is not None:
            sources.update(self.validation.heldout_sources())
        rows, self.heldout_dropped = self.source.read_rows(self.on_error, self.skips, heldout_sentences(sources))
        columns = list(getattr(self.source, "image_columns", ()))
        if self.validation is not None and columns:
            rows, dropped = drop_heldout_images(rows, columns, self.validation.heldout_images())
            self.heldout_dropped += dropped
        return rows

    def check_data(self) -> None:
        """Read every training and validation file now (formats, columns, empty files): run before the
        model loads, so bad data costs seconds."""
        self.source.check_paths()
        if self.validation is not None:
            self.validation.check(self.featurizer)
        if self.objective is not None and self.objective.row_kind != self.row_kind:
            raise DataConfigError(
                f"objective {type(self.objective).__name__} reads {self.objective.row_kind!r} rows but "
                f"{type(self.source).__name__} gives {self.row_kind!r} rows: pick matching objective= and data="
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
        if self.validation is not None and stage in (None, "fit", "validate"):
            self.validation.setup()

    def train_collator(self) -> ObjectiveCollator:
        if self.featurizer is None or self.objective is None:
            raise RuntimeError("build the DataModule with featurizer= and objective= (the run modules do)")
        prepare = self.source.row_preparer(self.featurizer, self.max_text_tokens, self.on_error)
        return ObjectiveCollator(prepare, self.objective, self.featurizer)

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
        if self.validation is None:
            return []
        return self.validation.dataloaders(self.featurizer)


def build_source(source, settings: Mapping):
    """`source` itself, or `source(**settings)` when it is a class or a partial (Hydra's `_partial_: true`);
    a `data.<key>` the source does not take is refused by name."""
    if not isinstance(source, (type, functools.partial)):
        if settings:
            raise DataConfigError(f"data.{sorted(settings)[0]}: not a DataModule setting, and data.source is "
                                  f"already built ({type(source).__name__})")
        return source
    target = source.func if isinstance(source, functools.partial) else source
    parameters = inspect.signature(target).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(settings) - set(parameters))
        if unknown:
            raise DataConfigError(f"data.{unknown[0]} is a setting of neither the DataModule nor its source "
                                  f"{target.__name__} (its settings: {', '.join(parameters) or 'none'})")
    bound = source.keywords if isinstance(source, functools.partial) else {}
    missing = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in settings and name not in bound]
    if missing:
        raise DataConfigError(f"data.{missing[0]} is not set: source {target.__name__} needs it")
    return source(**settings)
