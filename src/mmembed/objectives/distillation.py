"""UniME stage 1: the student matches a text teacher's similarity structure over the batch's texts.

The student texts of a batch are the SimCSE rows' anchors, positives and hard negatives, N = 3B texts
(2B without hard negatives). UniME distils over "N texts" of NLI; using every text of the triplets
gives each anchor more and harder candidates (its own entailment and contradiction) at no extra
data cost, and keeps the batch shaped like the InfoNCE recipe's, so both can share one data module.

The teacher never runs during training: `prepare(datamodule)` (called once by the training run,
before the model loads) embeds every distinct training sentence, cut exactly as training cuts it,
into a safetensors cache (mmembed.data.teacher_cache), or reuses the file from an earlier run.
Under multi-process training each node's local rank 0 builds the file; the other ranks wait for it.
`features` (DataLoader workers) then only looks rows up: the pickled objective carries the cache
path and the sentence index, and each process loads the vectors once, on first use.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mmembed.errors import ConfigError, DataConfigError
from mmembed.losses.distillation import distributed_relational_kl
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext

log = logging.getLogger(__name__)

ANCHOR, POSITIVE, HARD_NEGATIVE = "sent0", "sent1", "hard_neg"


class CachedTeacherRows:
    """sentence -> teacher row, from a cache file; the vectors are loaded on first use in each process.

    Pickling drops the vectors (DataLoader workers under `spawn` would otherwise each receive a copy
    of the whole matrix); the index, the distinct sentences, travels.
    """

    def __init__(self, path: Path, index: dict[str, int], vectors: torch.Tensor | None, build_command: str):
        self.path, self.index, self.vectors, self.build_command = Path(path), index, vectors, build_command

    def __getstate__(self) -> dict:
        return {**vars(self), "vectors": None}

    def rows(self, sentences: Sequence[str]) -> torch.Tensor:
        missing = [s for s in sentences if s not in self.index]
        if missing:
            raise DataConfigError(
                f"{len(missing)} of the batch's {len(sentences)} texts are not in the teacher cache {self.path} "
                f"(first: {missing[0]!r}); it was built for other training files, cutoff or tokenizer. "
                f"Build the cache for this run's data with `{self.build_command}`"
            )
        if self.vectors is None:
            from safetensors.torch import load_file

            from mmembed.data.teacher_cache import TENSOR

            self.vectors = load_file(self.path)[TENSOR]
        return self.vectors[torch.tensor([self.index[s] for s in sentences], dtype=torch.long)]


class TeacherDistillation(EmbeddingObjective):
    """What every distillation from a cached text teacher shares: the cache (`prepare`), the batch's texts and
    their teacher rows (`features`); a subclass says how the student's similarities are matched (`loss`).

    teacher: a packaged name (all-mpnet-base-v2, all-MiniLM-L6-v2), a sentence-transformers folder or a
    hub id. build_cache=false refuses to build a missing cache (e.g. on a cluster, build it beforehand on one
    GPU with the command the error gives). teacher_device=null: CUDA when available, else CPU.
    """

    row_kind = "text_pairs"

    def __init__(
        self,
        teacher: str = "all-mpnet-base-v2",
        *,
        cache_dir: str | None = None,
        use_hard_negatives: bool = True,
        build_cache: bool = True,
        teacher_device: str | None = None,
        teacher_batch_size: int = 64,
        wait_timeout_s: float = 4 * 3600,
    ):
        self.teacher, self.cache_dir = str(teacher), cache_dir
        self.use_hard_negatives, self.build_cache = bool(use_hard_negatives), bool(build_cache)
        self.teacher_device, self.teacher_batch_size = teacher_device, int(teacher_batch_size)
        self.wait_timeout_s = float(wait_timeout_s)
        self.teacher_rows: CachedTeacherRows | None = None  # set by prepare()

    # ---- once per run, in the main process, before the model loads ----
    def prepare(self, datamodule) -> Path:
        """Build (or find) the teacher cache of the data module's training files; returns its path."""
        files = getattr(datamodule, "train_files", None)
        if not files:
            raise ConfigError(f"objective {type(self).__name__} needs a data module with train_files (data=nli)")
        featurizer = datamodule.featurizer
        return self.prepare_files(files, featurizer.tokenizer, datamodule.max_text_tokens,
                                  tokenizer_name=getattr(featurizer, "name_or_path", None))

    def prepare_files(self, files: Sequence[str | Path], tokenizer, max_text_tokens: int | None,
                      tokenizer_name: str | None = None) -> Path:
        from mmembed.data.teacher_cache import TeacherCache, training_key_parts, training_sentences

        local = [Path(f).expanduser() for f in files]
        missing = [str(p) for p in local if not p.is_file()]
        if missing:
            raise DataConfigError(f"distillation reads local training files (its teacher cache is keyed by their "
                                  f"content); not found: {missing}")
        command = self.build_command(local, max_text_tokens, tokenizer_name)
        sentences = training_sentences(local, tokenizer, max_text_tokens)
        key_parts = training_key_parts(local, max_text_tokens)
        cache = TeacherCache(self.cache_dir, batch_size=self.teacher_batch_size, device=self.teacher_device)
        path = cache.path_for(self.teacher, sentences, key_parts)
        if not path.is_file():
            if local_rank() != 0:
                wait_for_file(path, self.wait_timeout_s, command)
            elif not self.build_cache:
                raise DataConfigError(f"no teacher cache for these training files ({path}) and objective.build_cache="
                                      f"false: build it with `{command}`")
        result = cache.embeddings(self.teacher, sentences, key_parts)
        log.info("teacher %s: %d sentences x %d %s %s", self.teacher, len(result), result.vectors.shape[1],
                 "embedded into" if result.built else "read from", result.path)
        self.teacher_rows = CachedTeacherRows(result.path, result.index, result.vectors, command)
        return result.path

    def build_command(self, files: Sequence[Path], max_text_tokens: int | None, tokenizer_name: str | None) -> str:
        """The teacher_cache CLI call that builds exactly the file `prepare` looks for."""
        args = ["python", "-m", "mmembed.prep.teacher_cache", "--teacher", self.teacher,
                "--files", *map(str, files), "--max-text-tokens", str(max_text_tokens or 0)]
        if tokenizer_name:
            args += ["--student-tokenizer", str(tokenizer_name)]
        if self.cache_dir:
            args += ["--cache-dir", str(self.cache_dir)]
        return shlex.join(args)

    # ---- DataLoader workers ----
    def student_texts(self, rows: Sequence[dict]) -> list[str]:
        """[anchors; positives; hard negatives]; a missing hard negative becomes its row's positive, so every
        rank distils over the same N (a duplicated text duplicates a column in both S_s and S_t alike)."""
        texts = [r[ANCHOR] for r in rows] + [r[POSITIVE] for r in rows]
        if self.use_hard_negatives and any(HARD_NEGATIVE in r for r in rows):
            texts += [r.get(HARD_NEGATIVE) or r[POSITIVE] for r in rows]
        return texts

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        if self.teacher_rows is None:
            raise ConfigError(f"{type(self).__name__} has no teacher embeddings yet: call objective.prepare(datamodule) "
                              "once before training (the training run does)")
        texts = self.student_texts(rows)
        return {"inputs": featurizer.featurize_text(texts), "teacher": self.teacher_rows.rows(texts)}

    # ---- training step ----
    def groups(self, features: dict) -> list[dict]:
        return [features["inputs"]]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        student = torch.cat(list(embeddings))
        teacher = features["teacher"].to(student.device)
        return ObjectiveOutput(self.match(student, teacher),
                               {"teacher_corr": similarity_correlation(student.detach(), teacher)})

    def match(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss between the student's and the teacher's embeddings of the same texts (rows aligned)."""
        raise NotImplementedError


class RelationalDistillation(TeacherDistillation):
    """loss = mean_i KL(softmax(S_t[i]/tau) || softmax(S_s[i]/tau)) over the batch's texts (candidates: all ranks).

    tau has no default: UniME does not publish it (see conf/objective/distillation.yaml). exclude_self=True
    drops each text's own column from both softmaxes (UniME's formula keeps it).
    """

    name = "distillation"

    def __init__(self, teacher: str = "all-mpnet-base-v2", *, tau: float, exclude_self: bool = False, **cache):
        if not float(tau) > 0:
            raise ConfigError(f"objective.tau must be > 0, got {tau}")
        super().__init__(teacher, **cache)
        self.tau, self.exclude_self = float(tau), bool(exclude_self)

    def match(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return distributed_relational_kl(student, teacher, self.tau, exclude_self=self.exclude_self)


def similarity_correlation(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Pearson correlation of the student's and the teacher's pairwise cosines (off-diagonal, local batch)."""
    student, teacher = student.float(), teacher.float()
    off_diagonal = ~torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
    pairs = torch.stack([(student @ student.T)[off_diagonal], (teacher @ teacher.T)[off_diagonal]])
    return float(torch.corrcoef(pairs)[0, 1])


def local_rank() -> int:
    """This process's rank on its node (torchrun / Lightning's launcher: LOCAL_RANK; SLURM: SLURM_LOCALID)."""
    for variable in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 0


def wait_for_file(path: Path, timeout_s: float, command: str, poll_s: float = 2.0) -> None:
    """Block until local rank 0 has written `path` (it renames a finished file into place)."""
    started = last_log = time.monotonic()
    log.info("local rank %d waits for local rank 0 to build the teacher cache %s", local_rank(), path)
    while not path.is_file():
        now = time.monotonic()
        if now - started > timeout_s:
            raise DataConfigError(f"waited {timeout_s:.0f} s for local rank 0 to build the teacher cache {path}; "
                                  f"if it failed, build the cache first with `{command}`")
        if now - last_log > 60:
            log.info("still waiting for the teacher cache %s (%.0f s)", path, now - started)
            last_log = now
        time.sleep(poll_s)
