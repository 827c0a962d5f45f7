"""Validation during training: STS-B dev Spearman (`val/sts_spearman`), the same number for every arm.

A piece of its own, beside the DataModule: it checks its folder, reads a fixed seeded subset of the dev
pairs once, and gives the validation loader (rows {s1, s2, score, id}, both sides featurised with the text
prompt; the ids let DDP's padded duplicates be dropped). Settings: `data.val_sts_dir` (null: no
validation), `data.val_split`, `data.val_limit`, `data.val_batch_size`; the subset is seeded by
`data.shuffle_seed`.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmembed.errors import DataConfigError


class StsValidation:
    def __init__(self, folder: str, split: str = "dev", limit: int | None = None, batch_size: int = 64,
                 seed: int = 42):
        self.folder, self.split, self.limit, self.batch_size, self.seed = folder, split, limit, batch_size, seed
        self.rows: list[dict] | None = None

    def check_paths(self) -> None:
        if not Path(self.folder).is_dir():
            raise DataConfigError(
                f"data.val_sts_dir={self.folder!r} does not exist (an STS-B folder with sts-{self.split}.csv). "
                "Set the data root (env MMEMBED_DATA / paths.data_root) or data.val_sts_dir=null to skip validation"
            )

    def setup(self) -> list[dict]:
        if self.rows is None:
            self.rows = sts_validation_rows(self.folder, self.split, self.limit, self.seed)
        return self.rows

    def dataloader(self, featurizer) -> DataLoader:
        return DataLoader(self.setup(), batch_size=self.batch_size, collate_fn=StsCollator(featurizer), num_workers=0)


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


def sts_validation_rows(folder: str, split: str, limit: int | None, seed: int) -> list[dict]:
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
