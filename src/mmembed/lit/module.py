"""The LightningModule: contrastive fine-tuning of an MLLMEmbedder, STS validation, adapter-only checkpoints."""

from __future__ import annotations

import math

import lightning as L
import torch

from mmembed.losses import info_nce
from mmembed.models.backbones import vision_modules
from mmembed.models.embedder import MLLMEmbedder


class EmbeddingLitModule(L.LightningModule):
    """Trains the embedder's trainable parameters (the LoRA adapters) with in-batch InfoNCE.

    Batches come from `TextPairCollator`: one tokenised batch holding [anchors; positives; hard
    negatives], embedded in a single forward pass and split into groups for the loss.
    """

    def __init__(self, embedder: MLLMEmbedder, loss: dict, optim: dict):
        super().__init__()
        self.embedder = embedder
        # Plain values only: the model is rebuilt from config, never pickled into checkpoints.
        self.save_hyperparameters(ignore=["embedder"])
        # Checkpoints hold the trainable (adapter) weights only; the frozen base comes from its folder.
        self.strict_loading = False
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ---- training ----
    def on_train_epoch_start(self) -> None:
        # Lightning keeps modules in the mode they were loaded in (eval, from from_pretrained):
        # train the adapters (LoRA dropout on), keep frozen vision modules' BatchNorm statistics fixed.
        self.embedder.train()
        for module in vision_modules(self.embedder.model).values():
            module.eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        embeddings = self.embedder(**batch["inputs"])
        groups = embeddings.split(batch["batch_size"])
        query, positive = groups[0], groups[1]
        hard_negative = groups[2] if len(groups) > 2 else None
        loss = info_nce(query, positive, hard_negative, temperature=self.hparams.loss["temperature"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; stopping. "
                "The last good checkpoint is kept in the run's checkpoints folder."
            )
        candidates = positive.shape[0] + (0 if hard_negative is None else hard_negative.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=query.shape[0])
        self.log("train/num_negatives", float(candidates - 1), batch_size=query.shape[0])
        return loss

    # ---- validation: STS Spearman of cosine similarities ----
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        e1 = self.embedder(**batch["inputs1"])
        e2 = self.embedder(**batch["inputs2"])
        self._val_outputs.append(((e1 * e2).sum(-1).detach().cpu(), batch["scores"].cpu(), batch["ids"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        cos, gold, ids = (torch.cat(x) for x in zip(*self._val_outputs))
        self._val_outputs.clear()
        cos, gold, ids = self.all_gather(cos), self.all_gather(gold), self.all_gather(ids)
        cos, gold, ids = cos.reshape(-1), gold.reshape(-1), ids.reshape(-1)
        # DistributedSampler pads with repeated samples: keep one entry per id.
        _, first = _unique_first(ids)
        self.log("val/sts_spearman", _spearman(cos[first], gold[first]) * 100, prog_bar=True, sync_dist=False)

    # ---- optimisation ----
    def configure_optimizers(self):
        cfg = self.hparams.optim
        params = [p for p in self.embedder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: no parameter requires grad (is lora.enabled false?)")
        optimizer = torch.optim.AdamW(
            params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), betas=tuple(cfg.get("betas", (0.9, 0.999)))
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(cfg.get("warmup_steps", 0) or round(cfg.get("warmup_ratio", 0.0) * total))
        schedule = _lr_lambda(cfg.get("schedule", "linear"), warmup, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: adapters only ----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def _lr_lambda(kind: str, warmup: int, total: int):
    def schedule(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        raise ValueError(f"optim.schedule={kind!r}: expected linear, cosine or constant")

    return schedule


def _unique_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique ids and the index of each one's first occurrence."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique.numel(),), ids.numel(), device=ids.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)
