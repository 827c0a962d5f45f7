"""Build everything from a composed config and run it: the only place Hydra configs meet the code."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmembed.errors import DataConfigError
from mmembed.lit.strategies import StrategyUnavailableError, manual_optimization_split, preflight
from mmembed.models.backbones import BackboneLoadError, load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.lora import apply_lora, load_adapter
from mmembed.models.prompts import PromptConfig, saved_prompts

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 2 * 2**30  # adapters and logs are small; refuse to start on a nearly full disk


class OutputDirError(RuntimeError):
    """The output folder cannot hold the run's results."""


# Errors caused by user input or settings: reported as one message, without a traceback.
USER_ERRORS = (
    BackboneLoadError,
    DataConfigError,
    OutputDirError,
    StrategyUnavailableError,
    FileNotFoundError,
    ValueError,
    FloatingPointError,
)


def quiet_library_logging() -> None:
    """Lightning attaches its own console handlers; under Hydra (which logs to console and a file)
    every line would print twice. Let its records flow to Hydra's handlers only."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


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


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig, out: Path) -> str | None:
    """`ckpt_path=last` -> `<checkpoint dir>/last.ckpt` of this run folder, refusing to silently start over.

    Lightning alone would warn and train from scratch when "last" finds nothing (e.g. a wrong
    `hydra.run.dir`). Checkpoints are torch pickles: resume only from files you (or this project) wrote.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        checkpoint_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
        folder = Path(checkpoint_cfg.get("dirpath") or out / "checkpoints")
        last = folder / "last.ckpt"
        if not last.is_file():
            raise DataConfigError(
                f"ckpt_path=last but {last} does not exist: set hydra.run.dir to the interrupted run's folder "
                "(the one holding checkpoints/last.ckpt), or ckpt_path to a checkpoint file"
            )
        return str(last)
    if ckpt_path in ("best", "hpc") or "://" in str(ckpt_path):
        return ckpt_path
    if not Path(ckpt_path).is_file():
        raise DataConfigError(f"ckpt_path={ckpt_path!r} is not a file")
    return str(ckpt_path)


def build_embedder(cfg: DictConfig, trainable: bool = False) -> MLLMEmbedder:
    """Backbone -> (saved adapter) -> (fresh LoRA when training) -> embedder, all from config."""
    from mmembed.models.quantization import prepare_for_kbit_training, quantization_config

    m = cfg.model
    quantization = quantization_config(m.get("quantization"))  # refuses 4bit without CUDA + bitsandbytes
    backbone = load_backbone(
        m.name_or_path,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
        text_only=m.text_only,
        attn_implementation=m.attn_implementation,
        padding_side=m.padding_side,
        cache_dir=m.get("cache_dir"),
        quantization_config=quantization,
    )
    if quantization is not None and trainable:
        backbone.model = prepare_for_kbit_training(backbone.model, bool(m.get("gradient_checkpointing")))
    if m.get("gradient_checkpointing") and trainable:
        backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    adapter = cfg.get("adapter")
    prompts = PromptConfig.from_mapping(OmegaConf.to_container(cfg.prompt, resolve=True))
    trained_with = saved_prompts(adapter) if adapter else None
    if trained_with is not None and trained_with != prompts:
        # The configured prompts win (YAML is the source of values), but say so loudly.
        log.warning("adapter %s was trained with other prompts than prompt=... selects: %s vs %s", adapter, trained_with, prompts)
    if adapter:
        backbone.model = load_adapter(backbone.model, adapter, merge=bool(cfg.get("merge_adapter", False)))
    if trainable and cfg.lora.enabled:
        if adapter and not cfg.get("merge_adapter", False):
            raise ValueError("training on top of an unmerged adapter: set merge_adapter=true")
        lora = cfg.lora
        backbone.model = apply_lora(backbone.model, lora.r, lora.alpha, lora.dropout, lora.get("target_modules"))
    return MLLMEmbedder(backbone, prompts)


def run_training(cfg: DictConfig) -> dict:
    """Fit the embedder as configured; returns the summary also written to `train_summary.json`."""
    import lightning as L
    from hydra.utils import instantiate

    from mmembed.lit.callbacks import CostMonitor
    from mmembed.lit.checkpoint_io import AtomicCheckpointIO, ResumeState
    from mmembed.lit.data_quality import DataQualityMonitor
    from mmembed.lit.module import EmbeddingLitModule

    out = ensure_writable(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg, out)  # before the model loads
    preflight(cfg.trainer, cfg.loss)  # a missing strategy package fails here, before data and model load
    datamodule = instantiate(cfg.data)
    datamodule.check_paths()  # before the model loads: a wrong path costs seconds, not minutes
    L.seed_everything(cfg.seed, workers=True)
    embedder = build_embedder(cfg, trainable=True)
    datamodule.bind(embedder.featurize_text, embedder.backbone.tokenizer)
    # GradCache optimises manually: the module applies the trainer's clipping and accumulation.
    trainer_overrides, manual_kwargs = manual_optimization_split(cfg.trainer, cfg.loss)
    module = EmbeddingLitModule(
        embedder,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        **manual_kwargs,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(ResumeState())  # RNG states in checkpoints: a resumed run continues exactly
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if not cfg.trainer.get("plugins"):
        # Checkpoints are written to a temp file, fsync'ed and renamed: a kill never leaves half a last.ckpt.
        trainer_overrides = {**trainer_overrides, "plugins": [AtomicCheckpointIO()]}
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **trainer_overrides)
    if logger:
        logger.log_hyperparams(_flat_hparams(cfg))
    if cfg.get("validate_before_training") and not cfg.trainer.get("fast_dev_run"):
        before = trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        before = []
    # weights_only: resuming unpickles tensors and plain containers only, never code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    cost = next((c.summary(module) for c in callbacks if isinstance(c, CostMonitor)), {})
    data_quality = next((c.history for c in callbacks if isinstance(c, DataQualityMonitor)), [])
    summary = {
        "model": str(cfg.model.name_or_path),
        "text_only": bool(cfg.model.text_only),
        "global_step": trainer.global_step,
        "val_before": before[0] if before else None,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "cost": cost,
        "data_quality": data_quality,
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
