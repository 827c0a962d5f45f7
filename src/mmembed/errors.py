"""The bad-input policy shared by every reader: `on_error="skip"` (drop and count) or `"raise"`.

`DataConfigError` is the one error type for bad data settings and bad input files; the entry points
prints it without a traceback (exit code 2). With `skip`, readers record what they dropped in a
`SkipCounter` (how many, why, and the first few items) that training logs as `data/skipped`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

ON_ERROR = ("skip", "raise")


class MMEmbedError(Exception):
    """Base of the errors a user can fix (a setting, a file, a missing package).

    Entry points print these as one line without a traceback (exit code 2); any other exception, e.g. a
    bug deep in torch or transformers, keeps its traceback.
    """


class ConfigError(MMEmbedError, ValueError):
    """A setting (or a combination of settings) mmembed cannot run; the message names it."""


class DataConfigError(MMEmbedError, ValueError):
    """Bad data settings or files; the message names the setting or file to fix."""


class BadImageError(DataConfigError):
    """An image that cannot be used: missing, unreadable, truncated, too large, or of an unsupported kind.

    Raised with `on_error="raise"`; the message names the file and the reason.
    """

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"cannot use image {source}: {reason} (on_error='skip', data.on_error=skip in training, skips and counts such inputs)")


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise DataConfigError(f"data.on_error={on_error!r}: expected one of {ON_ERROR}")
    return on_error


@dataclass
class SkipCounter:
    """Counts skipped inputs by reason and remembers the first `keep` of them (item, reason).

    Process-local: DataLoader workers hold their own copies, so per-batch skips travel in the batch
    (`batch["skipped"]`) and the training callback sums them (see `mmembed.lit.data_quality`).
    """

    keep: int = 5
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item: object, reason: str, n: int = 1) -> None:
        self.count += n
        self.reasons[reason] += n
        if len(self.examples) < self.keep:
            self.examples.append((str(item), reason))

    def merge(self, other: SkipCounter) -> SkipCounter:
        self.count += other.count
        self.reasons.update(other.reasons)
        self.examples.extend(other.examples[: max(0, self.keep - len(self.examples))])
        return self

    def reset(self) -> None:
        self.count = 0
        self.reasons.clear()
        self.examples.clear()

    def summary(self) -> str:
        if not self.count:
            return "nothing skipped"
        reasons = ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common())
        first = "; ".join(f"{item} ({reason})" for item, reason in self.examples)
        return f"skipped {self.count} input(s) [{reasons}]; first: {first}"
