"""Callbacks: PEFT adapter folders beside Lightning checkpoints, and cost measurements."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import lightning as L
import psutil

from mmembed.lit.strategies import full_state_dict_of
from mmembed.models.backbones import vision_modules
from mmembed.models.lora import BASE_ADAPTER_DIR
from mmembed.models.model_record import save_model_record
from mmembed.models.prompts import save_prompts


class AdapterSaver(L.Callback):
    """Writes `save_pretrained` adapter folders: `<dirpath>/step-<N>` after each validation and `last`.

    These folders are what evaluation and `Embedder.from_pretrained(..., adapter=...)` load; the
    Lightning .ckpt files (also adapter-only) exist for resuming with optimizer state.

    `base_adapter`: the saved adapter this run started from (merged into the base before the new LoRA):
    each folder carries a copy of it, since the new adapter only means something on top of it.
    """

    def __init__(self, dirpath: str, keep_every_validation: bool = True, base_adapter: str | None = None):
        self.dirpath = Path(dirpath)
        self.keep_every_validation = keep_every_validation
        self.base_adapter = Path(base_adapter).resolve() if base_adapter else None
        self.model_record: dict | None = None  # set by the run: base, extension, pooler (mmembed_model.json)

    @staticmethod
    def _full_state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict | None:
        """Under FSDP rank 0 holds only its shard of each parameter: the adapter model's state dict gathered whole
        (every rank takes part, rank 0 receives it). None under other strategies: save_pretrained reads the model."""
        from lightning.pytorch.strategies import FSDPStrategy

        model = pl_module.embedder.model
        if not isinstance(trainer.strategy, FSDPStrategy) or not hasattr(model, "peft_config"):
            return None
        return full_state_dict_of(trainer.strategy.model, model)

    def _save(self, pl_module: L.LightningModule, name: str, state: dict | None = None) -> Path:
        target = self.dirpath / name
        model = pl_module.embedder.model
        if not hasattr(model, "save_pretrained") or not hasattr(model, "peft_config"):
            return target
        tmp = self.dirpath / f".{name}.tmp"
        # `state`: the full tensors gathered under FSDP; PEFT picks the adapter's entries from it
        model.save_pretrained(str(tmp), **({"state_dict": state} if state is not None else {}))
        save_prompts(pl_module.embedder.renderer.config, tmp)  # loaders render what training rendered
        if self.model_record is not None:
            save_model_record(self.model_record, tmp)  # the extension and pooler a loader must rebuild
        if self.base_adapter is not None:
            shutil.copytree(self.base_adapter, tmp / BASE_ADAPTER_DIR, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # a kill mid-save never leaves a half-written adapter under its final name
        return target

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        state = self._full_state(trainer, pl_module)  # a collective under FSDP: every rank, before the rank check
        if not trainer.is_global_zero:
            return
        if self.keep_every_validation:
            self._save(pl_module, f"step-{trainer.global_step}", state)
        self._save(pl_module, "last", state)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self._full_state(trainer, pl_module)
        if trainer.is_global_zero:
            self._save(pl_module, "last", state)


class BaseModelSaver(L.Callback):
    """At the end of training, writes the whole model (e.g. the base with its aligned projector) as a
    `save_pretrained` folder with its processor, which `model.name_or_path` can then name.

    The folder is written beside its final place and renamed, so a half-written model never exists
    under `dirpath`; `provenance` (what it was trained on) is saved as `mmembed_provenance.json`.
    """

    def __init__(self, dirpath: str, provenance: dict | None = None):
        self.dirpath = Path(dirpath)
        self.provenance = provenance or {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return

        backbone = pl_module.embedder.backbone
        self.dirpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath.with_name(f".{self.dirpath.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        backbone.model.save_pretrained(str(tmp))
        backbone.processor.save_pretrained(str(tmp))
        record = {**self.provenance, "global_step": trainer.global_step,
                  "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}
        (tmp / "mmembed_provenance.json").write_text(json.dumps(record, indent=2, default=str))
        if self.dirpath.exists():
            shutil.rmtree(self.dirpath)
        os.replace(tmp, self.dirpath)


class CostMonitor(L.Callback):
    """Seconds per step, samples/s and memory, logged as perf/* and written to `cost.json`."""

    def __init__(self, output_file: str | None = None):
        self.output_file = output_file
        self.step_times: list[float] = []
        self.samples = 0
        self.peak_rss_train = 0
        self.rss_at_start = 0
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.rss_at_start = psutil.Process().memory_info().rss

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t0
        self.step_times.append(dt)
        size = batch.get("batch_size", 0) if isinstance(batch, dict) else 0
        self.samples += size
        rss = psutil.Process().memory_info().rss
        self.peak_rss_train = max(self.peak_rss_train, rss)
        pl_module.log("perf/sec_per_step", dt, batch_size=max(size, 1))
        pl_module.log("perf/rss_mb", rss / 2**20, batch_size=max(size, 1))

    def summary(self, pl_module) -> dict:
        # Skip the first step (allocator warm-up) when there are enough steps to do so.
        times = self.step_times[1:] if len(self.step_times) > 2 else self.step_times
        mean = sum(times) / len(times) if times else float("nan")
        batch = self.samples / max(len(self.step_times), 1)
        return {
            "steps": len(self.step_times),
            "sec_per_step": mean,
            "samples_per_sec": batch / mean if times else float("nan"),
            "rss_at_train_start_mb": self.rss_at_start / 2**20,
            "peak_rss_during_training_mb": self.peak_rss_train / 2**20,
            # ru_maxrss is in KiB on Linux: the whole process' peak, model loading included.
            "peak_rss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "vision_tower_in_memory": bool(vision_modules(pl_module.embedder.model)),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if self.output_file and trainer.is_global_zero:
            Path(self.output_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output_file).write_text(json.dumps(self.summary(pl_module), indent=2))
