"""The LightningModule: contrastive fine-tuning of an MLLMEmbedder, STS validation, adapter-only checkpoints."""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch

from mmembed.losses import distributed_info_nce, grad_cache_step
from mmembed.models.backbones import vision_modules
from mmembed.models.embedder import MLLMEmbedder

# Wrapper prefixes FSDP / activation checkpointing insert into parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_forward_module.")


class EmbeddingLitModule(L.LightningModule):
    """Trains the embedder's trainable parameters (the LoRA adapters) with in-batch InfoNCE.

    Batches come from `TextPairCollator`: one tokenised batch holding [anchors; positives; hard
    negatives], embedded in one forward pass (or in GradCache chunks) and split into groups for the loss.

    Across devices (DDP / FSDP / DeepSpeed) the candidates are gathered from every rank with gradient
    and the anchors stay local, so each query sees `world * (positives + hard negatives)` candidates.
    Each rank's loss is the mean over its own queries; the strategies average gradients over ranks,
    which is then exactly the gradient of one process on the concatenated batch (no extra scaling).

    `loss.cache.chunk_size` (GradCache) switches to manual optimisation: the batch is embedded in
    chunks of that many sequences, the loss is backpropagated to the embeddings, and each chunk is
    re-run with grad. Lightning refuses `Trainer(gradient_clip_val, accumulate_grad_batches)` under
    manual optimisation, so those two trainer settings are handed to this module instead (see
    `mmembed.lit.strategies.manual_optimization_split`), which applies them itself.
    """

    def __init__(
        self,
        embedder: MLLMEmbedder,
        loss: dict,
        optim: dict,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        accumulate_grad_batches: int = 1,
    ):
        super().__init__()
        self.embedder = embedder
        # Plain values only: the model is rebuilt from config, never pickled into checkpoints.
        self.save_hyperparameters(ignore=["embedder"])
        # Checkpoints hold the trainable (adapter) weights only; the frozen base comes from its folder.
        self.strict_loading = False
        self.chunk_size = ((loss.get("cache") or {}).get("chunk_size")) or None
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise ValueError(f"loss.cache.chunk_size must be null or >= 1, got {self.chunk_size}")
        if int(accumulate_grad_batches) < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.automatic_optimization = self.chunk_size is None
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ---- training ----
    def on_train_epoch_start(self) -> None:
        # Lightning keeps modules in the mode they were loaded in (eval, from from_pretrained):
        # train the adapters (LoRA dropout on), keep frozen vision modules' BatchNorm statistics fixed.
        self.embedder.train()
        for module in vision_modules(self.embedder.model).values():
            module.eval()

    def on_train_start(self) -> None:
        # A mid-epoch resume skips on_train_epoch_start; set the modes here too.
        self.on_train_epoch_start()

    def embed(self, inputs: dict) -> torch.Tensor:
        """One tokenised batch (or chunk) -> [n, D] L2-normalised embeddings."""
        return self.embedder(**inputs)

    @staticmethod
    def input_groups(batch: dict) -> list[dict]:
        """A batch's model inputs as a list of groups: one tokenised batch (text pairs), or several
        of different kinds (image-text: [captions, images]), embedded separately and concatenated."""
        inputs = batch["inputs"]
        return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]

    def contrastive_loss(self, embeddings: torch.Tensor, batch: dict):
        """InfoNCE over [anchors; positives; hard negatives], candidates gathered from every rank."""
        groups = embeddings.split(batch["batch_size"])
        query, positive = groups[0], groups[1]
        hard_negative = groups[2] if len(groups) > 2 else None
        return distributed_info_nce(query, positive, hard_negative, temperature=self.hparams.loss["temperature"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            embeddings = torch.cat([self.embed(group) for group in self.input_groups(batch)])
            out = self.contrastive_loss(embeddings, batch)
            self._check_and_log(out.loss, out.num_negatives, batch)
            return out.loss
        return self._grad_cache_training_step(batch, batch_idx)

    def _grad_cache_training_step(self, batch: dict, batch_idx: int) -> None:
        opt = self.optimizers()
        accumulate = int(self.hparams.accumulate_grad_batches)
        window_start = batch_idx % accumulate == 0
        boundary = (batch_idx + 1) % accumulate == 0 or self.trainer.is_last_batch
        if window_start:
            opt.zero_grad()
        strategy = self.trainer.strategy
        block_sync = getattr(strategy, "block_backward_sync", None)  # DDP: all-reduce once per window
        info = {}

        def loss_fn(*group_embeddings: torch.Tensor) -> torch.Tensor:
            out = self.contrastive_loss(torch.cat(group_embeddings), batch)
            info["loss"], info["num_negatives"] = out.loss.detach(), out.num_negatives
            # Like Lightning's automatic accumulation: each micro-batch contributes loss / accumulate.
            return out.loss / accumulate

        outer = contextlib.nullcontext() if boundary or block_sync is None else block_sync()
        with outer:
            grad_cache_step(
                self.embed,
                self.input_groups(batch),
                loss_fn,
                int(self.chunk_size),
                backward_fn=self.manual_backward,
                no_sync=block_sync if boundary else None,
            )
        self._check_and_log(info["loss"], info["num_negatives"], batch)
        if boundary:
            if self.hparams.gradient_clip_val:
                self.clip_gradients(
                    opt,
                    gradient_clip_val=self.hparams.gradient_clip_val,
                    gradient_clip_algorithm=self.hparams.gradient_clip_algorithm,
                )
            opt.step()
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    def _check_and_log(self, loss: torch.Tensor, num_negatives: int | None, batch: dict) -> None:
        # Every rank takes the same decision, so one rank's NaN stops all of them (no hang).
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; stopping. "
                "The last good checkpoint is kept in the run's checkpoints folder."
            )
        size = int(batch["batch_size"])
        # The mean over ranks of the local losses is the loss of the concatenated (global) batch.
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size, sync_dist=True)
        if num_negatives is not None:  # Global candidates - 1: the negatives each query really competes against.
            self.log("train/num_negatives", float(num_negatives), batch_size=size)

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
        first = first.cpu()
        # Every rank holds the same gathered values; sync_dist averages identical numbers (a no-op).
        spearman = _spearman(cos.cpu()[first], gold.cpu()[first]) * 100
        self.log("val/sts_spearman", spearman, prog_bar=True, sync_dist=True)
        self.log("val/num_pairs", float(first.numel()), sync_dist=True)

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
        accumulate = int(self.hparams.accumulate_grad_batches)
        if accumulate > 1 and self.trainer.max_steps == -1:
            # Manual accumulation: the trainer counts batches, the optimizer steps once per window.
            total = max(math.ceil(total / accumulate), 1)
        warmup = int(cfg.get("warmup_steps", 0) or round(cfg.get("warmup_ratio", 0.0) * total))
        schedule = _lr_lambda(cfg.get("schedule", "linear"), warmup, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: adapters only ----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {clean_param_name(name) for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_param_name(k) in trainable}


def clean_param_name(name: str) -> str:
    """A parameter name without the wrapper prefixes FSDP / activation checkpointing insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


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
