"""What every benchmark task is: a name, what it needs of an embedder, a check of its files, and a run.

A task is a dataclass with typed settings (keyword-only), built from its config file by `hydra.utils.instantiate`
(conf/benchmark/<file>.yaml names it with `_target_`) or directly in Python. Constructing one reads nothing:
`check()` reads the annotations and checks the files (before any model loads), `run()` embeds and scores. Both
take no config and write no file, so the same object serves an evaluation suite or a validation set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from mmembed.models.encoder import capabilities


@dataclass(kw_only=True)
class Benchmark:
    """Subclasses set `task` (the protocol's and the report's task name), `needs` (capabilities of
    mmembed.models.encoder the embedder must have) and implement `check` and `run`."""

    name: str = ""
    task: ClassVar[str] = "benchmark"
    needs: ClassVar[frozenset[str]] = frozenset({"text"})

    def __post_init__(self):
        self.name = self.name or self.task

    def check(self):
        """Read the annotations and check every file exists (raises BenchmarkLayoutError / DataConfigError);
        returns what was read."""
        raise NotImplementedError

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        """{"metrics": {name: float}, "protocol": {...}} of `embedder` on this benchmark."""
        raise NotImplementedError

    def validation_plan(self, limit: int | None = None, seed: int = 42):
        """This benchmark as a validation set during training (mmembed.evaluation.validation.ValidationPlan): the
        inputs to embed and the scoring of their embedding table; `limit` keeps a fixed part (a CPU budget)."""
        from mmembed.errors import ConfigError

        raise ConfigError(f"benchmark {self.name!r} ({type(self).__name__}) has no validation form; validation sets "
                          "are STS, caption retrieval and CIRR benchmarks")

    def missing(self, embedder) -> frozenset[str]:
        """The capabilities this benchmark needs that `embedder` lacks (empty: it can run)."""
        return frozenset(self.needs) - capabilities(embedder)

    def settings(self, *keys: str) -> Mapping:
        """Some of this task's settings as the mapping the data/evalsets readers take (with its name)."""
        return {"name": self.name, **{k: getattr(self, k) for k in keys}}
