"""A tiny, fully seeded Lightning run of EmbeddingLitModule, in-process or as a DDP script.

In-process (tests): `run(model_dir, out_dir, devices=1, ...)` returns the adapter gradients and
weights after training plus the logged metrics. As a script, Lightning's `strategy=ddp` re-launches
this file once per extra rank (so it imports only mmembed, never `tests`):

    python tests/lit/harness.py MODEL_DIR OUT_DIR --devices 2 --batch-size 2 [--chunk-sizes 0 2] [--validate]

One run per chunk size (0: no GradCache), one after the other in the same processes and process group
(each run re-seeds and builds its model afresh, so runs do not see each other); rank 0 writes
OUT_DIR/result_chunk{N}.pt for each, and `--validate` validates before the first run. Inputs are left-padded to a fixed length so every process sees
identical tensors whatever its share of the batch (only the batch dimension differs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mmembed.data.collate import ObjectiveCollator, TextPairRows
from mmembed.data.evalsets.sts import STSPairs
from mmembed.evaluation.benchmarks.sts import STSBenchmark
from mmembed.lit.module import EmbeddingLitModule
from mmembed.lit.strategies import ddp_strategy, manual_optimization_split
from mmembed.lit.validation import ValidationSets
from mmembed.losses import split_batch
from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.lora import apply_lora
from mmembed.objectives import TextPairInfoNCE

SEQ_LEN = 64
TRIPLETS = [
    ("Two women are embracing while holding packages.", "Two woman are holding packages.", "The men are fighting outside a deli."),
    ("Two kids in jerseys are washing their hands.", "Two kids wash their hands.", "Two kids in jackets walk to school."),
    ("A man selling donuts to a customer.", "A woman drinks her coffee in a small cafe.", "A man is selling food."),
    ("Some people are in a car.", "People are in a vehicle.", "Nobody is in the car."),
    ("A dog runs through the snow.", "An animal is outside in the cold.", "A cat sleeps on a sofa."),
    ("Children are playing soccer on a field.", "Kids play a game outdoors.", "The children are asleep in bed."),
    ("A woman is slicing an onion.", "Someone is cutting vegetables.", "A woman is riding a horse."),
    ("A man plays the guitar on stage.", "A musician performs.", "A man is swimming in a lake."),
]
STS_PAIRS = [  # 7 pairs: an odd count, so a 2-rank DistributedSampler pads with a duplicate
    ("A plane is taking off.", "An air plane is taking off.", 5.0),
    ("A man is playing a large flute.", "A man is playing a flute.", 3.8),
    ("A man is spreading cheese on a pizza.", "A man is spreading shredded cheese on an uncooked pizza.", 3.8),
    ("Three men are playing chess.", "Two men are playing chess.", 2.6),
    ("A man is playing the cello.", "A man seated is playing the cello.", 4.25),
    ("Some men are fighting.", "Two men are fighting.", 4.25),
    ("A man is smoking.", "A man is skating.", 0.5),
]


def make_embedder(model_dir, dropout: float = 0.0, r: int = 4, seed: int = 0) -> MLLMEmbedder:
    """Tiny backbone + fresh LoRA whose B matrices are random too (so A gets gradients at step 1)."""
    backbone = load_backbone(str(model_dir), text_only=True)
    torch.manual_seed(seed)
    backbone.model = apply_lora(backbone.model, r=r, alpha=2 * r, dropout=dropout)
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return MLLMEmbedder(backbone)


class FixedLength:
    """The embedder's featurizer, left-padded to SEQ_LEN: identical rows however the batch is split."""

    def __init__(self, featurizer):
        self.featurizer = featurizer

    def truncate(self, texts, max_tokens):
        return list(texts)

    def featurize_text(self, texts):
        inputs = self.featurizer.featurize_text(texts)
        pad = SEQ_LEN - inputs["input_ids"].shape[1]
        assert pad >= 0, "raise SEQ_LEN"
        pad_id = self.featurizer.tokenizer.pad_token_id
        return {
            "input_ids": torch.nn.functional.pad(inputs["input_ids"], (pad, 0), value=pad_id),
            "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (pad, 0), value=0),
        }


def fixed_length(embedder: MLLMEmbedder):
    return FixedLength(embedder.featurizer).featurize_text


def train_loader(embedder: MLLMEmbedder, batch_size: int, rows: int = 4) -> DataLoader:
    data = [{"sent0": a, "sent1": p, "hard_neg": n} for a, p, n in TRIPLETS[:rows]]
    featurizer = FixedLength(embedder.featurizer)
    collate = ObjectiveCollator(TextPairRows(featurizer, None), TextPairInfoNCE(0.05), featurizer)
    return DataLoader(data, batch_size=batch_size, shuffle=False, drop_last=True, collate_fn=collate)


class HarnessSTS(STSBenchmark):
    """STS_PAIRS as an STS benchmark (no file): validation scores them with STSBenchmark's own scoring."""

    def check(self):
        a, b, scores = zip(*STS_PAIRS)
        return [STSPairs("harness", list(a), list(b), list(scores))], "in memory"


def validation_sets(batch_size: int = 2) -> ValidationSets:
    bench = HarnessSTS(name="sts", format="stsb", path="-")
    return ValidationSets({"sts": {"benchmark": bench, "batch_size": batch_size, "log_as": {"spearman": "val/sts_spearman"}}})


def val_loader(embedder: MLLMEmbedder, sets: ValidationSets) -> DataLoader:
    """The validation set's loader with the fixed-length featurizer (identical rows however they are split)."""
    (loader,) = sets.dataloaders(FixedLength(embedder.featurizer))
    return loader


class ChunkedForward(torch.nn.Module):
    """The plain (automatic) path, embedding chunk by chunk *with* grad: one graph over the whole
    batch, but dropout masks drawn chunk by chunk, as GradCache draws them."""

    def __init__(self, embedder: MLLMEmbedder, chunk: int):
        super().__init__()
        self.embedder, self.chunk = embedder, chunk

    def forward(self, **inputs) -> torch.Tensor:
        return torch.cat([self.embedder(**c) for c in split_batch(inputs, self.chunk)])


class ChunkedForwardModule(EmbeddingLitModule):
    forward_chunk = 2

    def training_step(self, batch: dict, batch_idx: int):
        out = self.objective(ChunkedForward(self.embedder, self.forward_chunk), batch["features"], self.context())
        self._check_and_log(out.loss, out.metrics, batch)
        return out.loss


class SeedEachStep(L.Callback):
    """The same RNG state at the start of every training batch, in every run."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(1000 + batch_idx)


def run(
    model_dir,
    out_dir=None,
    *,
    devices: int = 1,
    batch_size: int = 4,
    rows: int = 4,
    chunk_size: int | None = None,
    dropout: float = 0.0,
    accumulate: int = 1,
    clip: float | None = None,
    max_steps: int = 1,
    chunked_forward: int | None = None,
    validate: bool = False,
    lr: float = 1e-2,
    out_name: str = "result.pt",
) -> dict:
    L.seed_everything(0, verbose=False)
    embedder = make_embedder(model_dir, dropout=dropout)
    # No warmup: transformers' linear warmup starts at lr 0, which would make the first step a no-op.
    optim = {"lr": lr, "warmup_steps": 0, "schedule": "linear"}
    trainer_cfg = {"gradient_clip_val": clip, "accumulate_grad_batches": accumulate}
    overrides, manual = manual_optimization_split(trainer_cfg, chunk_size)
    cls = EmbeddingLitModule
    if chunked_forward:
        cls = type("Chunked", (ChunkedForwardModule,), {"forward_chunk": chunked_forward})
    sets = validation_sets()
    module = cls(embedder, TextPairInfoNCE(0.05), optim=optim, chunk_size=chunk_size, validation=sets, **manual)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=ddp_strategy(process_group_backend="gloo") if devices > 1 else "auto",
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0 if not validate else None,
        callbacks=[SeedEachStep()],
        **{**trainer_cfg, **overrides},
    )
    result: dict = {}
    if validate:
        result["val"] = {k: float(v) for k, v in trainer.validate(module, val_loader(embedder, sets), verbose=False)[0].items()}
    trainer.fit(module, train_dataloaders=train_loader(embedder, batch_size, rows))
    params = {n: p for n, p in module.embedder.named_parameters() if p.requires_grad}
    result.update(
        grads={n: p.grad.detach().clone() for n, p in params.items()},
        weights={n: p.detach().clone() for n, p in params.items()},
        metrics={k: float(v) for k, v in trainer.callback_metrics.items()},
        global_step=trainer.global_step,
        lr=trainer.optimizers[0].param_groups[0]["lr"],
        world_size=trainer.world_size,
    )
    if out_dir is not None and trainer.is_global_zero:
        torch.save(result, Path(out_dir) / out_name)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[0], help="one run per value; 0: no GradCache")
    ap.add_argument("--validate", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for i, chunk in enumerate(args.chunk_sizes):
        run(args.model_dir, args.out_dir, devices=args.devices, batch_size=args.batch_size, chunk_size=chunk or None,
            validate=args.validate and i == 0, out_name=f"result_chunk{chunk}.pt")


if __name__ == "__main__":
    main()
