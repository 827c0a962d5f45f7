"""The one LightningModule: any objective (or a weighted sum), validation sets, adapter-only checkpoints.

Batches come from `ObjectiveCollator`: `batch["features"]` is what the objective built from the rows;
the objective returns the loss and its metrics (logged as `train/<name>`).

Across devices (DDP / FSDP / DeepSpeed) contrastive objectives gather candidates from every rank with
gradient and keep the anchors local; each rank's loss is the mean over its own queries, and the
strategies' gradient average is then exactly the gradient of one process on the concatenated batch.

`grad_cache.chunk_size` (GradCache) switches to manual optimisation for objectives that support it
(`objective.supports_grad_cache`; others are refused): the objective's input groups are embedded in
chunks of that many sequences, the loss is backpropagated to the embeddings, and each chunk is re-run
with grad. Lightning refuses `Trainer(gradient_clip_val, accumulate_grad_batches)` under manual
optimisation, so those two settings are handed to this module (`strategies.manual_optimization_split`).
"""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch

from mmembed.errors import ConfigError, MMEmbedError
from mmembed.lit.validation import TowerCacheDuringValidation, ValidationTables
from mmembed.losses import grad_cache_step
from mmembed.models.backbones import vision_modules
from mmembed.models.embedder import MLLMEmbedder
from mmembed.objectives.base import Objective, StepContext

# Wrapper prefixes FSDP / activation checkpointing insert into parameter names.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_forward_module.")


class NonFiniteLossError(MMEmbedError, FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointMismatchError(MMEmbedError):
    """A checkpoint's adapter weights do not fit the model being trained."""


class EmbeddingLitModule(L.LightningModule):
    def __init__(
        self,
        embedder: MLLMEmbedder,
        objective: Objective,
        optim: dict,
        chunk_size: int | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        accumulate_grad_batches: int = 1,
        validation=None,
    ):
        super().__init__()
        self.embedder, self.objective = embedder, objective
        # Plain values only: the model is rebuilt from config, never pickled into checkpoints.
        self.save_hyperparameters(ignore=["embedder", "objective", "validation"])
        # Checkpoints hold the trainable (adapter) weights only; the frozen base comes from its folder.
        self.strict_loading = False
        if chunk_size is not None and int(chunk_size) < 1:
            raise ConfigError(f"grad_cache.chunk_size must be null or >= 1, got {chunk_size}")
        if chunk_size is not None and not objective.supports_grad_cache:
            raise ConfigError(
                f"objective {type(objective).__name__} cannot run under GradCache (grad_cache.chunk_size="
                f"{chunk_size}): its loss is not a function of pooled embeddings. Set grad_cache.chunk_size=null"
            )
        if int(accumulate_grad_batches) < 1:
            raise ConfigError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.chunk_size = chunk_size
        self.automatic_optimization = chunk_size is None
        self.validation = validation
        self._val_tables, self._tower_cache = None, TowerCacheDuringValidation()
        # The last validation's sets and gathered tables ({set: (ids, embeddings)}), for lit.tensorboard_views.
        self.last_validation: tuple | None = None

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

    def context(self) -> StepContext:
        return StepContext(global_step=self.global_step, training=self.training)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            out = self.objective(self.embedder, batch["features"], self.context())
            self._check_and_log(out.loss, out.metrics, batch)
            return out.loss
        return self._grad_cache_training_step(batch, batch_idx)

    def _grad_cache_training_step(self, batch: dict, batch_idx: int) -> None:
        opt = self.optimizers()
        accumulate = int(self.hparams.accumulate_grad_batches)
        window_start = batch_idx % accumulate == 0
        boundary = (batch_idx + 1) % accumulate == 0 or self.trainer.is_last_batch
        if window_start:
            opt.zero_grad()
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", None)  # DDP: all-reduce once per window
        features, ctx, info = batch["features"], self.context(), {}

        def loss_fn(*embeddings: torch.Tensor) -> torch.Tensor:
            info["out"] = out = self.objective.loss(list(embeddings), features, ctx)
            # Like Lightning's automatic accumulation: each micro-batch contributes loss / accumulate.
            return out.loss / accumulate

        outer = contextlib.nullcontext() if boundary or block_sync is None else block_sync()
        with outer:
            grad_cache_step(
                lambda inputs: self.embedder(**inputs),
                self.objective.groups(features),
                loss_fn,
                int(self.chunk_size),
                backward_fn=self.manual_backward,
                no_sync=block_sync if boundary else None,
            )
        out = info["out"]
        self._check_and_log(out.loss.detach(), out.metrics, batch)
        if boundary:
            if self.hparams.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val,
                                    gradient_clip_algorithm=self.hparams.gradient_clip_algorithm)
            opt.step()
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    def _check_and_log(self, loss: torch.Tensor, metrics: dict, batch: dict) -> None:
        # Every rank takes the same decision, so one rank's NaN stops all of them (no hang).
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step}; stopping. "
                "The last good checkpoint is kept in the run's checkpoints folder."
            )
        size = int(batch["batch_size"])
        # The mean over ranks of the local losses is the loss of the concatenated (global) batch.
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size, sync_dist=True)
        for key, value in metrics.items():
            self.log(f"train/{key}", float(value), batch_size=size)

    # ---- validation: every set of `val=` (mmembed.lit.validation), one dataloader each ----
    def on_validation_epoch_start(self) -> None:
        # the sets given to this module, else the DataModule's (`data.val_sets`)
        sets = self.validation or getattr(getattr(self.trainer, "datamodule", None), "validation", None)
        self._val_tables = ValidationTables(sets, self.device) if sets is not None and sets.names else None
        if self._val_tables is not None and sets.needs_images():
            self._tower_cache.enter(self.embedder.model)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._val_tables.update(dataloader_idx, batch["groups"], lambda inputs: self.embedder(**inputs))

    def on_validation_epoch_end(self) -> None:
        self._tower_cache.exit()
        if self._val_tables is None:
            return
        # Every rank gathers every rank's embeddings (padded duplicates dropped by id) and scores the same
        # table, so every rank holds the same values; sync_dist averages identical numbers (a no-op).
        for key, value in self._val_tables.metrics().items():
            self.log(key, value, prog_bar=key == "val/sts_spearman", sync_dist=True, add_dataloader_idx=False)
        self.last_validation = (self._val_tables.sets, self._val_tables.gathered)
        self._val_tables = None

    # ---- optimisation ----
    def configure_optimizers(self):
        from transformers import get_scheduler

        cfg = self.hparams.optim
        params = [p for p in self.embedder.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("nothing to train: no parameter requires grad (is lora.enabled false?)")
        optimizer = torch.optim.AdamW(
            params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0), betas=tuple(cfg.get("betas", (0.9, 0.999)))
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        accumulate = int(self.hparams.accumulate_grad_batches)
        if accumulate > 1 and self.trainer.max_steps == -1:
            # Manual accumulation: the trainer counts batches, the optimizer steps once per window.
            total = max(math.ceil(total / accumulate), 1)
        warmup = int(cfg.get("warmup_steps", 0) or round(cfg.get("warmup_ratio", 0.0) * total))
        kind = cfg.get("schedule", "linear")
        if kind not in ("linear", "cosine", "constant"):
            raise ConfigError(f"optim.schedule={kind!r}: expected linear, cosine or constant")
        name = {"constant": "constant_with_warmup"}.get(kind, kind)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints: adapters only ----
    def trainable_names(self) -> set[str]:
        return {clean_param_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_param_name(k) in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # strict_loading is off (the frozen base is not in the file), so check the adapter keys ourselves:
        # a checkpoint of another LoRA configuration must not load silently.
        saved = {clean_param_name(k) for k in checkpoint.get("state_dict", {})}
        expected = self.trainable_names()
        if saved != expected:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise CheckpointMismatchError(
                f"the checkpoint's adapter weights do not match this model: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). Resume with the "
                "same model, lora and train_projector settings the run was started with"
            )


def clean_param_name(name: str) -> str:
    """A parameter name without the wrapper prefixes FSDP / activation checkpointing insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name
