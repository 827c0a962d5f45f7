"""Build everything from a composed config and run it: the only place Hydra configs meet the code."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmembed.data.text_pairs import DataConfigError
from mmembed.models.backbones import BackboneLoadError, load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.lora import apply_lora, load_adapter
from mmembed.models.prompts import PromptConfig

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 2 * 2**30  # adapters and logs are small; refuse to start on a nearly full disk


class OutputDirError(RuntimeError):
    """The output folder cannot hold the run's results."""


# Errors caused by user input or settings: reported as one message, without a traceback.
USER_ERRORS = (BackboneLoadError, DataConfigError, OutputDirError, FileNotFoundError, ValueError, FloatingPointError)


def ensure_writable(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Fail before any work if the output folder cannot be written or its disk is nearly full."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"output folder {path} is not writable ({err.strerror}); set hydra.run.dir") from err
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise OutputDirError(f"only {free / 2**30:.1f} GiB free under {path}; need {min_free_bytes / 2**30:.0f} GiB")
    return path


def build_embedder(cfg: DictConfig, trainable: bool = False) -> MLLMEmbedder:
    """Backbone -> (saved adapter) -> (fresh LoRA when training) -> embedder, all from config."""
    m = cfg.model
    backbone = load_backbone(
        m.name_or_path,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
        text_only=m.text_only,
        attn_implementation=m.attn_implementation,
        padding_side=m.padding_side,
        cache_dir=m.get("cache_dir"),
    )
    if m.get("gradient_checkpointing") and trainable:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    adapter = cfg.get("adapter")
    if adapter:
        backbone.model = load_adapter(backbone.model, adapter, merge=bool(cfg.get("merge_adapter", False)))
    if trainable and cfg.lora.enabled:
        if adapter and not cfg.get("merge_adapter", False):
            raise ValueError("training on top of an unmerged adapter: set merge_adapter=true")
        lora = cfg.lora
        backbone.model = apply_lora(backbone.model, lora.r, lora.alpha, lora.dropout, lora.get("target_modules"))
    return MLLMEmbedder(backbone, PromptConfig.from_mapping(OmegaConf.to_container(cfg.prompt, resolve=True)))


def run_training(cfg: DictConfig) -> dict:
    """Fit the embedder as configured; returns the summary also written to `train_summary.json`."""
    import lightning as L
    from hydra.utils import instantiate

    from mmembed.lit.callbacks import CostMonitor
    from mmembed.lit.module import EmbeddingLitModule

    out = ensure_writable(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    datamodule.check_paths()  # before the model loads: a wrong path costs seconds, not minutes
    L.seed_everything(cfg.seed, workers=True)
    embedder = build_embedder(cfg, trainable=True)
    datamodule.bind(embedder.featurize_text, embedder.backbone.tokenizer)
    module = EmbeddingLitModule(
        embedder,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    if logger:
        logger.log_hyperparams(_flat_hparams(cfg))
    if cfg.get("validate_before_training") and not cfg.trainer.get("fast_dev_run"):
        before = trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        before = []
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    cost = next((c.summary(module) for c in callbacks if isinstance(c, CostMonitor)), {})
    summary = {
        "model": str(cfg.model.name_or_path),
        "text_only": bool(cfg.model.text_only),
        "global_step": trainer.global_step,
        "val_before": before[0] if before else None,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "cost": cost,
        "output_dir": str(out),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("training summary: %s", json.dumps(summary))
    return summary


def _flat_hparams(cfg: DictConfig) -> dict:
    """Scalar config values as dotted keys, for TensorBoard's HParams tab."""
    flat = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif isinstance(value, (int, float, str, bool)) or value is None:
                flat[name] = "null" if value is None else value
            else:
                flat[name] = str(value)

    container = OmegaConf.to_container(cfg, resolve=True)
    walk({k: v for k, v in container.items() if k not in ("paths", "callbacks", "logger", "hydra")}, "")
    return flat
