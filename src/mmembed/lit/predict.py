"""Corpus embedding on Lightning: `Trainer.predict` with a shard writer on every rank (src/embed.py).

`embed_corpus` plans the shards still to embed (`mmembed.inference.shards`), runs `Trainer.predict`
where rank r embeds shards r, r + world_size, ... and writes each one as soon as it is complete, then,
once every rank is done, assembles the shards on rank 0 in corpus order into the index. Each rank
gets whole shards and batches of its own (no DistributedSampler, `use_distributed_sampler=False`):
nothing is padded or duplicated, and a shard's batches, hence its vectors, do not depend on the
number of ranks. Images are decoded in the DataLoader (workers, if `num_workers`); unreadable ones
travel in the batch as failures, so `on_error=raise` raises the project's error in the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from mmembed.data.images import load_image
from mmembed.errors import BadImageError, ConfigError, DataConfigError, check_on_error
from mmembed.inference import shard_assembly, shards
from mmembed.inference.cli import Corpus
from mmembed.inference.index import write_index
from mmembed.inference.inputs import batches, length_order
from mmembed.inference.prefix import build_prefix_cache

log = logging.getLogger(__name__)


class CorpusImageError(BadImageError):
    """An unreadable corpus image under on_error=raise; the hint names the embed setting, not data.on_error."""

    def __init__(self, source: str, reason: str):
        DataConfigError.__init__(self, f"cannot use image {source}: {reason} (on_error=skip, the default, skips "
                                       "such inputs and lists them in <out>/skipped.jsonl)")
        self.source, self.reason = source, reason


class CorpusBatches(Dataset):
    """Item i = batch i of this rank: (shard k, input positions), with its texts or decoded images."""

    def __init__(self, corpus: Corpus, plan: Sequence[tuple[int, list[int]]]):
        self.corpus, self.plan = corpus, list(plan)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        k, positions = self.plan[i]
        items = self.corpus.items
        if self.corpus.modality == "text":
            return {"shard": k, "ids": positions, "texts": [items[p] for p in positions], "failed": []}
        ids, images, failed = [], [], []
        for p in positions:
            try:
                images.append(load_image(items[p], on_error="raise"))
                ids.append(p)
            except BadImageError as err:
                failed.append((p, err.reason))
        return {"shard": k, "ids": ids, "images": images, "failed": failed}


def _as_is(batch):  # module level: DataLoader workers pickle it
    return batch


class CorpusEmbedModule(LightningModule):
    """predict_step = `Embedder.encode` on one batch (same prompts, pooling and fast path as the Python API)."""

    def __init__(self, embedder, corpus: Corpus, todo: Sequence[shards.Shard], batch_size: int, kind: str,
                 on_error: str, num_workers: int = 0):
        super().__init__()
        # Fewer shards than ranks leaves a rank without batches: it has nothing to write, which is fine.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.embedder = embedder
        self.net = embedder.embedder  # registered, so Lightning moves the model to this rank's device
        self.corpus, self.todo, self.kind = corpus, list(todo), kind
        self.batch_size, self.on_error, self.num_workers = batch_size, check_on_error(on_error), num_workers
        self.seconds = 0.0

    def predict_dataloader(self) -> DataLoader:
        mine = self.todo[self.global_rank :: self.trainer.world_size]
        plan = [(shard.k, chunk) for shard in mine for chunk in self._batches(shard.positions)]
        return DataLoader(CorpusBatches(self.corpus, plan), batch_size=None, collate_fn=_as_is,
                          num_workers=self.num_workers)

    def _batches(self, positions: list[int]) -> list[list[int]]:
        if self.corpus.modality != "text":
            return batches(positions, self.batch_size)
        # Texts of similar token length share a batch (little padding); the writer restores input order.
        counts = self.embedder.backbone.tokenizer([self.corpus.items[p] for p in positions], add_special_tokens=False)
        order = length_order([len(ids) for ids in counts["input_ids"]])
        return batches([positions[i] for i in order], self.batch_size)

    def on_predict_start(self) -> None:
        self.started = time.perf_counter()
        # The prompt-prefix cache was computed on the device the model was loaded on; redo it on this one.
        prefix = self.embedder.prefix
        if prefix is not None and prefix.ids.device != self.device:
            self.embedder.prefix = build_prefix_cache(self.embedder.embedder)

    def on_predict_end(self) -> None:
        self.seconds = time.perf_counter() - self.started  # the predict loop alone (no process start-up)

    def predict_step(self, batch: dict) -> dict:
        if batch["failed"] and self.on_error == "raise":
            position, reason = batch["failed"][0]
            raise CorpusImageError(self.corpus.items[position], reason)
        inputs = {"texts": batch["texts"]} if "texts" in batch else {"images": batch["images"]}
        vectors = self.embedder.encode(**inputs, kind=self.kind, batch_size=max(len(batch["ids"]), 1), progress=False)
        return {"shard": batch["shard"], "ids": batch["ids"], "vectors": vectors, "failed": batch["failed"]}


class ShardWriter(BasePredictionWriter):
    """Collects a rank's batch outputs per shard and writes each shard once all its inputs are through."""

    def __init__(self, out: Path, corpus: Corpus, todo: Sequence[shards.Shard], settings: dict):
        super().__init__(write_interval="batch")
        self.out, self.corpus, self.settings = out, corpus, settings
        self.sizes = {shard.k: len(shard.positions) for shard in todo}
        self.ranges = {shard.k: (shard.positions[0], shard.positions[-1] + 1) for shard in todo}
        self.parts: dict[int, list[dict]] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        k = prediction["shard"]
        parts = self.parts.setdefault(k, [])
        parts.append(prediction)
        if sum(len(p["ids"]) + len(p["failed"]) for p in parts) == self.sizes[k]:
            self._write(trainer.global_rank, k, self.parts.pop(k))

    def _write(self, rank: int, k: int, parts: list[dict]) -> None:
        ids = [i for p in parts for i in p["ids"]]
        order = sorted(range(len(ids)), key=ids.__getitem__)
        vectors = torch.cat([p["vectors"] for p in parts])[torch.tensor(order, dtype=torch.long)]
        rows = [{"input_id": ids[i], "modality": self.corpus.modality, **self.corpus.rows[ids[i]]} for i in order]
        skipped = [{"input_id": p, **self.corpus.rows[p], "reason": reason}
                   for part in parts for p, reason in part["failed"]]
        shards.write_shard(self.out, rank, k, vectors, rows, skipped, self.ranges[k], self.settings)


@dataclasses.dataclass
class EmbedSummary:
    inputs: int
    embedded: int  # rows of the index
    skipped: int
    new: int  # inputs this run tried (the rest came from finished shards)
    shards: int
    dim: int
    seconds: float  # rank 0's predict loop


def embed_corpus(embedder, corpus: Corpus, out_dir: str | Path, make_trainer: Callable, *, model: str,
                 adapter: str | None = None, dtype: str = "float32", kind: str | None = None, batch_size: int = 32,
                 shard_size: int = 1024, on_error: str = "skip", num_workers: int = 0, overwrite: bool = False,
                 faiss_kind: str | None = None, faiss_options: dict | None = None,
                 callbacks: Sequence = ()) -> EmbedSummary | None:
    """Embed `corpus` into shards and an index in `out_dir`, resuming what an earlier run finished.

    make_trainer(**overrides) builds the Trainer (e.g. `partial(hydra.utils.instantiate, cfg.trainer)`).
    faiss_kind ("flat", "ivf", "hnsw"; options as in mmembed.inference.faiss_index) adds a FAISS index.
    Returns the summary on rank 0, None on the other ranks.
    """
    out = Path(out_dir).resolve()
    kind = kind or corpus.modality
    if corpus.modality == "text" and kind != "text":
        raise ConfigError(f"kind={kind!r}: texts are embedded with the 'text' prompt (kind=null or kind=text)")
    settings = {"model": str(model), "adapter": str(Path(adapter).resolve()) if adapter else None, "dtype": dtype,
                "modality": corpus.modality, "kind": kind, "prompt_config": dataclasses.asdict(embedder.prompts)}
    if embedder.truncate_dim:  # only when set, so folders embedded before truncate_dim existed still resume
        settings["truncate_dim"] = embedder.truncate_dim
    done = shards.finished_shards(out, settings, overwrite)
    todo = shards.plan_shards(out, corpus.rows, done, shard_size, shards.next_shard_number(out))
    out.mkdir(parents=True, exist_ok=True)
    module = CorpusEmbedModule(embedder, corpus, todo, batch_size, kind, on_error, num_workers)
    # No autocast: the vectors' precision is the model's own dtype (model.dtype), whatever the trainer group's
    # training precision (conf/trainer/cpu.yaml picks bf16-mixed for training on CPUs with native bf16).
    trainer = make_trainer(callbacks=[ShardWriter(out, corpus, todo, settings), *callbacks], logger=False,
                           use_distributed_sampler=False, enable_checkpointing=False, enable_model_summary=False,
                           precision="32-true")
    new = sum(len(shard.positions) for shard in todo)
    # rank_zero_info: before predict() sets up the ranks, trainer.global_rank is 0 in every process.
    rank_zero_info(f"{len(corpus.rows)} inputs: {len(corpus.rows) - new} in {len(done)} finished shards, {new} to "
                   f"embed in {len(todo)} shards on {trainer.num_nodes * trainer.num_devices} rank(s)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*infer the batch indices.*")  # batches come whole (batch_size=None)
        warnings.filterwarnings("ignore", message=r".*across ranks is zero.*")  # a rerun with nothing left to embed
        trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier("mmembed-shards-written")  # rank 0 reads every rank's shards next
    if not trainer.is_global_zero:
        return None
    ks = {shard.k for shard in todo}
    records = done + [r for r in shards.read_records(out).values() if r["k"] in ks]
    assembled = shard_assembly.assemble(out, corpus.rows, records, embedder.dim)
    info = {**settings, "model_path": embedder.backbone.name_or_path, "source": corpus.source,
            "prompt": embedder.renderer.render(kind, "<sent>"), "prompts": embedder.rendered_prompts(),
            "normalized": True, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    counts = {"inputs": len(corpus.rows), "embedded": len(assembled.rows), "skipped": len(assembled.skipped),
              "new": new, "shards": len(records)}
    write_index(out, assembled.vectors, assembled.rows, info, faiss_kind, faiss_options)
    shard_assembly.write_skipped(out, assembled.skipped)
    shard_assembly.write_manifest(out, {**info, "dim": embedder.dim}, records, counts)
    shard_assembly.remove_unlisted(out, records)
    if assembled.skipped:
        log.warning("skipped %d unreadable input(s), listed in %s", len(assembled.skipped), out / shards.SKIPPED)
    return EmbedSummary(len(corpus.rows), len(assembled.rows), len(assembled.skipped), new, len(records),
                        embedder.dim, module.seconds)
