"""One training run from a composed config: data checked, model built, fitted, summarised (and evaluated).

Order matters for users: everything that can fail on a setting or a file (output folder, resume path,
strategy packages, every training and validation file) is checked before the model loads.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import time

from omegaconf import DictConfig, OmegaConf

from mmembed.lit.strategies import manual_optimization_split, preflight
from mmembed.models.factory import build_embedder, build_featurizer
from mmembed.run.config import lora_spec, model_spec
from mmembed.run.folders import OutputDirError, disk_full_cause, ensure_writable, last_checkpoint, resolve_ckpt_path
from mmembed.run.hparams import flat_hparams
from mmembed.run.monitors import check_monitors

log = logging.getLogger(__name__)


def grad_cache_chunk_size(cfg: DictConfig) -> int | None:
    return (cfg.get("grad_cache") or {}).get("chunk_size") or None


def build_datamodule(data_cfg: DictConfig, featurizer, objective):
    """The one DataModule and its source from `data=` (conf/data/*.yaml); a wrong data setting fails in one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mmembed.errors import MMEmbedError

    try:
        return instantiate(data_cfg, featurizer=featurizer, objective=objective)
    except InstantiationException as err:
        if isinstance(err.__cause__, MMEmbedError):
            raise err.__cause__ from None
        raise


def run_training(cfg: DictConfig) -> dict:
    """Fit the embedder as configured; returns the summary also written to `train_summary.json`."""
    import lightning as L
    from hydra.utils import instantiate

    from mmembed.lit.module import EmbeddingLitModule

    started = time.perf_counter()
    out = ensure_writable(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg, out)  # before the model loads
    chunk_size = grad_cache_chunk_size(cfg)
    objective = instantiate(cfg.objective, _convert_="all")
    preflight(cfg.trainer, chunk_size, objective, cfg.get("callbacks"))  # refused here, before data and model load
    spec = model_spec(cfg)
    featurizer = build_featurizer(spec)  # tokenizer + processor only: no weights yet
    datamodule = build_datamodule(cfg.data, featurizer, objective)
    datamodule.check_data()  # every training and validation file read now: bad data costs seconds
    check_monitors(cfg, getattr(datamodule, "validation", None))  # monitors name metrics val= will log
    prepare = getattr(objective, "prepare", None)  # one-time work an objective needs, e.g. a teacher cache
    if callable(prepare):
        prepare(datamodule)
    L.seed_everything(cfg.seed, workers=True)
    embedder = build_embedder(spec, featurizer, trainable=True, lora=lora_spec(cfg),
                              train_projector=bool(cfg.get("train_projector")))
    # GradCache optimises manually: the module applies the trainer's clipping and accumulation.
    trainer_overrides, manual_kwargs = manual_optimization_split(cfg.trainer, chunk_size)
    module = EmbeddingLitModule(embedder, objective, optim=OmegaConf.to_container(cfg.optim, resolve=True),
                                chunk_size=chunk_size, **manual_kwargs)
    trainer, callbacks, logger = _build_trainer(cfg, trainer_overrides)
    if logger:
        logger.log_hyperparams(flat_hparams(cfg))
    if cfg.get("validate_before_training") and not cfg.trainer.get("fast_dev_run"):
        before = trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        before = []
    _fit(trainer, module, datamodule, ckpt_path, cfg, out)
    summary = _summary(cfg, trainer, module, callbacks, before, out, started)
    final_metrics = dict(summary["metrics"])
    if cfg.get("evaluation") and trainer.is_global_zero:
        from mmembed.run.evaluation import evaluate_trained

        del module, trainer, embedder, datamodule  # free the training copy before loading the evaluation one
        gc.collect()
        adapter_dir = out / "adapters" / "last" if cfg.lora.enabled else None
        summary["evaluation"] = evaluate_trained(cfg, adapter_dir, out / "eval", logger or None)
        final_metrics.update(summary["evaluation"]["metrics"])
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if logger:
        _log_final(logger, cfg, summary, final_metrics)
    return summary


def adapter_model_record(cfg: DictConfig) -> dict:
    """The base, model extension and pooler of this run, as `_target_` records (mmembed.models.model_record)."""
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    return {"base": str(cfg.model.name_or_path), "extension": plain(cfg.model.get("extension")),
            "pooler": plain(cfg.get("pooler"))}


def _build_trainer(cfg: DictConfig, trainer_overrides: dict):
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    from mmembed.lit.callbacks import AdapterSaver
    from mmembed.lit.checkpoint_io import AtomicCheckpointIO, ResumeState

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(ResumeState())  # RNG states in checkpoints: a resumed run continues exactly
    for callback in callbacks:
        if isinstance(callback, AdapterSaver):  # each adapter folder says what else it needs to load
            callback.model_record = adapter_model_record(cfg)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if not logger:  # `~logger`: Lightning refuses a LearningRateMonitor without a logger; it has nothing to do
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("plugins"):
        # Checkpoints are written to a temp file, fsync'ed and renamed: a kill never leaves half a last.ckpt.
        trainer_overrides = {**trainer_overrides, "plugins": [AtomicCheckpointIO()]}
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **trainer_overrides)
    return trainer, callbacks, logger


def _fit(trainer, module, datamodule, ckpt_path, cfg: DictConfig, out) -> None:
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


def _summary(cfg: DictConfig, trainer, module, callbacks, before, out, started: float) -> dict:
    from mmembed.lit.callbacks import CostMonitor
    from mmembed.lit.data_quality import DataQualityMonitor

    summary = {
        "model": str(cfg.model.name_or_path),
        "text_only": bool(cfg.model.text_only),
        "objective": type(module.objective).__name__,
        "global_step": trainer.global_step,
        # one dict per validation dataloader (set), each holding every set's metrics: merged
        "val_before": {k: v for d in before for k, v in d.items()} if before else None,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "cost": next((c.summary(module) for c in callbacks if isinstance(c, CostMonitor)), {}),
        "data_quality": next((c.history for c in callbacks if isinstance(c, DataQualityMonitor)), []),
        "output_dir": str(out),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("training summary: %s", json.dumps(summary))
    return summary


def _log_final(logger, cfg: DictConfig, summary: dict, final_metrics: dict) -> None:
    step = summary["global_step"]
    if "metrics" in inspect.signature(logger.log_hyperparams).parameters:
        # TensorBoard's HParams tab: this run's settings next to its final numbers (re-logged at the
        # last step, so each curve's last point is unchanged).
        logger.log_hyperparams(flat_hparams(cfg), metrics=final_metrics, step=step)
    else:  # e.g. CSVLogger: settings to hparams.yaml, plus the evaluation numbers (training ones are logged)
        logger.log_hyperparams(flat_hparams(cfg))
        if summary.get("evaluation"):
            logger.log_metrics(summary["evaluation"]["metrics"], step=step)
    logger.finalize("success")  # flush the event file now: the process may go on to another sweep job
