"""Build everything from a composed config and run it: the only place Hydra configs meet the code."""

from __future__ import annotations

import errno
import gc
import inspect
import json
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mmembed.errors import DataConfigError
from mmembed.lit.strategies import StrategyUnavailableError, manual_optimization_split, preflight
from mmembed.models.backbones import BackboneLoadError, load_backbone, projector_module
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


def last_checkpoint(cfg: DictConfig, out: Path) -> Path:
    """Where this run's ModelCheckpoint keeps `last.ckpt` (it may not exist yet)."""
    checkpoint_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    return Path(checkpoint_cfg.get("dirpath") or out / "checkpoints") / "last.ckpt"


def disk_full_cause(err: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind `err`, if any. torch.save reports a full disk as a RuntimeError
    ("unexpected pos ...") raised while handling the OSError, so the cause/context chain is searched."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig, out: Path) -> str | None:
    """`ckpt_path=last` -> `<checkpoint dir>/last.ckpt` of this run folder, refusing to silently start over.

    Lightning alone would warn and train from scratch when "last" finds nothing (e.g. a wrong
    `hydra.run.dir`). Checkpoints are torch pickles: resume only from files you (or this project) wrote.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = last_checkpoint(cfg, out)
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
    try:
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
    except BackboneLoadError as err:
        if m.get("how_to_get"):  # e.g. the aligned base: say which command writes it
            raise BackboneLoadError(f"{err}; {m.how_to_get}") from err
        raise
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
    if trainable and cfg.get("train_projector"):
        if m.text_only:
            raise ValueError("train_projector=true needs the vision modules: set model.text_only=false")
        if not cfg.lora.enabled:
            backbone.model.requires_grad_(False)  # projector alignment: the projector alone learns
        projector_module(backbone.model).requires_grad_(True)
    return MLLMEmbedder(backbone, prompts)


def run_training(cfg: DictConfig) -> dict:
    """Fit the embedder as configured; returns the summary also written to `train_summary.json`."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    from mmembed.lit.callbacks import CostMonitor
    from mmembed.lit.checkpoint_io import AtomicCheckpointIO, ResumeState
    from mmembed.lit.data_quality import DataQualityMonitor
    from mmembed.lit.module import EmbeddingLitModule

    started = time.perf_counter()
    out = ensure_writable(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg, out)  # before the model loads
    preflight(cfg.trainer, cfg.loss)  # a missing strategy package fails here, before data and model load
    datamodule = instantiate(cfg.data)
    datamodule.check_paths()  # before the model loads: a wrong path costs seconds, not minutes
    L.seed_everything(cfg.seed, workers=True)
    embedder = build_embedder(cfg, trainable=True)
    captioning = cfg.loss.get("name") == "captioning"
    if captioning:
        from mmembed.lit.align_module import CaptionAlignLitModule
        from mmembed.models.captioning import CaptionFeaturizer

        featurize_captions = CaptionFeaturizer(embedder.backbone, embedder.renderer, cfg.loss.instruction)
        datamodule.bind_embedder(embedder, featurize_captions=featurize_captions)
    else:
        datamodule.bind_embedder(embedder)
    # GradCache optimises manually: the module applies the trainer's clipping and accumulation.
    trainer_overrides, manual_kwargs = manual_optimization_split(cfg.trainer, cfg.loss)
    module_cls = CaptionAlignLitModule if captioning else EmbeddingLitModule
    module = module_cls(
        embedder,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        **manual_kwargs,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(ResumeState())  # RNG states in checkpoints: a resumed run continues exactly
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if not logger:  # `~logger`: Lightning refuses a LearningRateMonitor without a logger; it has nothing to do
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
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
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Exception as err:
        full = disk_full_cause(err)
        if full is None:
            raise
        # Checkpoints are written atomically (AtomicCheckpointIO): the failed save left the last one whole.
        last = last_checkpoint(cfg, out)
        if last.is_file():
            then = (f"the last complete checkpoint is intact: {last}. Free space, then resume with the same "
                    f"overrides plus hydra.run.dir={out} ckpt_path=last")
        else:
            then = "no checkpoint had been completed. Free space, then start the run again"
        raise OutputDirError(f"the disk holding {out} filled up during training ({full.strerror}); {then}") from err
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
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("training summary: %s", json.dumps(summary))
    final_metrics = dict(summary["metrics"])
    if cfg.get("evaluation") and trainer.is_global_zero:
        del module, trainer, embedder, datamodule  # free the training copy before loading the evaluation one
        gc.collect()
        adapter_dir = out / "adapters" / "last" if cfg.lora.enabled else None
        summary["evaluation"] = evaluate_trained(cfg, adapter_dir, out / "eval", logger or None)
        final_metrics.update(summary["evaluation"]["metrics"])
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if logger:
        step = summary["global_step"]
        if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
            # TensorBoard's HParams tab: this run's settings next to its final numbers (re-logged at the
            # last step, so each curve's last point is unchanged).
            logger.log_hyperparams(_flat_hparams(cfg), metrics=final_metrics, step=step)
        else:  # e.g. CSVLogger: settings to hparams.yaml, plus the evaluation numbers (training ones are logged)
            logger.log_hyperparams(_flat_hparams(cfg))
            if summary.get("evaluation"):
                logger.log_metrics(summary["evaluation"]["metrics"], step=step)
        logger.finalize("success")  # flush the event file now: the process may go on to another sweep job
    return summary


def benchmark_list(eval_cfg: DictConfig) -> list[dict]:
    """`eval.benchmarks` (name -> settings; a null entry disables it) as plain dicts with their names."""
    benchmarks = OmegaConf.to_container(eval_cfg.benchmarks, resolve=True) or {}
    return [dict(cfg, name=cfg.get("name") or key) for key, cfg in benchmarks.items() if cfg]


def evaluate_trained(cfg: DictConfig, adapter_dir: Path | None, out_dir: Path, logger=None) -> dict:
    """Evaluate the model just trained (base + `adapter_dir`, vision tower loaded) on `cfg.evaluation`'s
    benchmarks, and draw the modality gap of `evaluation.modality_gap`'s pairs before and after training.

    Returns {"metrics": {"eval/<benchmark>/<metric>": value, "gap/...": value}, "results": path}.
    """
    from mmembed.evaluation.suite import check_benchmarks, evaluate_suite
    from mmembed.inference import Embedder

    ev = cfg.evaluation
    benchmarks = benchmark_list(ev)
    check_benchmarks(benchmarks)
    eval_cfg = cfg.copy()
    with open_dict(eval_cfg):
        eval_cfg.model.text_only = False  # a text-only run is evaluated with its vision tower back
        eval_cfg.adapter = str(adapter_dir) if adapter_dir else None
        eval_cfg.merge_adapter = True
    batch_size, progress = int(ev.get("batch_size") or 16), bool(ev.get("progress", True))
    metrics: dict[str, float] = {}
    trained = Embedder(build_embedder(eval_cfg, trainable=False)).eval()
    if ev.get("modality_gap"):
        metrics.update(_modality_gap(cfg, trained, out_dir, batch_size, progress, logger))
    results = evaluate_suite(
        trained, benchmarks, out_dir, batch_size=batch_size, model=str(cfg.model.name_or_path),
        adapter=str(adapter_dir) if adapter_dir else None, progress=progress,
        extra={"suite": ev.get("suite"), "trained_in": str(out_dir.parent)},
    )
    for name, entry in results["benchmarks"].items():
        metrics.update({f"eval/{name}/{k}": float(v) for k, v in entry["metrics"].items()})
    return {"metrics": metrics, "results": str(out_dir / "results.json")}


def _modality_gap(cfg: DictConfig, trained, out_dir: Path, batch_size: int, progress: bool, logger) -> dict:
    """PCA picture + numbers of the image/text embeddings of held-out pairs, base model vs trained."""
    from mmembed.data.benchmarks.captions import read_caption_config
    from mmembed.evaluation.modality_gap import gap_stats, pair_embeddings, plot_modality_gap
    from mmembed.inference import Embedder

    gap_cfg = OmegaConf.to_container(cfg.evaluation.modality_gap, resolve=True)
    bench = read_caption_config(gap_cfg)
    limit = gap_cfg.get("max_pairs")
    base_cfg = cfg.copy()
    with open_dict(base_cfg):
        base_cfg.model.text_only, base_cfg.adapter = False, None
    base = Embedder(build_embedder(base_cfg, trainable=False)).eval()
    panels = {"before training": pair_embeddings(base, bench, batch_size, limit, progress)}
    del base
    gc.collect()
    panels["after training"] = pair_embeddings(trained, bench, batch_size, limit, progress)
    figure = plot_modality_gap(panels, out_dir / "modality_gap.png")
    metrics = {}
    for when, (image, text) in panels.items():
        for key, value in gap_stats(image, text).items():
            metrics[f"gap/{key}_{when.split()[0]}"] = value
    (out_dir / "modality_gap.json").write_text(json.dumps(metrics, indent=2))
    if logger is not None and hasattr(getattr(logger, "experiment", None), "add_figure"):
        logger.experiment.add_figure("modality_gap", figure, global_step=0)
    return metrics


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
