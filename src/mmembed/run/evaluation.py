"""Post-training evaluation: the trained adapter on a benchmark suite, and the modality gap before/after."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmembed.errors import ConfigError
from mmembed.models.factory import build_embedder
from mmembed.run.config import base_of_adapter, model_spec

log = logging.getLogger(__name__)


def build_benchmark(name: str, settings: DictConfig):
    """One benchmark object from its config (conf/benchmark/<file>.yaml: `_target_` + typed settings), named `name`
    unless the config gives its own `name`. A setting the class does not take fails in one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not OmegaConf.select(settings, "_target_"):
        raise ConfigError(f"benchmark {name!r}: no _target_ (a benchmark class, e.g. "
                          f"mmembed.evaluation.benchmarks.sts.STSBenchmark); compose one of conf/benchmark/")
    try:
        return instantiate(settings, name=settings.get("name") or name, _convert_="all")
    except InstantiationException as err:
        raise ConfigError(f"benchmark {name!r}: {str(err).splitlines()[-1]}") from err


def benchmark_list(eval_cfg: DictConfig) -> list:
    """`eval.benchmarks` (name -> benchmark config; a null entry disables it) as benchmark objects, in order."""
    benchmarks = eval_cfg.get("benchmarks") or {}
    return [build_benchmark(str(key), settings) for key, settings in benchmarks.items() if settings]


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
    # A text-only run is evaluated with its vision tower back, and with the prompts it was trained with.
    spec = model_spec(cfg, explicit_prompts=False, inference=True, text_only=False,
                      adapter=str(adapter_dir) if adapter_dir else None, merge_adapter=True)
    batch_size, progress = int(ev.get("batch_size") or 16), bool(ev.get("progress", True))
    metrics: dict[str, float] = {}
    trained = Embedder(build_embedder(spec), truncate_dim=ev.get("truncate_dim")).eval()
    if ev.get("modality_gap"):
        metrics.update(_modality_gap(cfg, trained, out_dir, batch_size, progress, logger))
    results = evaluate_suite(
        trained, benchmarks, out_dir, batch_size=batch_size, model=base_of_adapter(cfg),
        adapter=str(adapter_dir) if adapter_dir else None, progress=progress,
        extra={"suite": ev.get("suite"), "trained_in": str(out_dir.parent), "truncate_dim": trained.truncate_dim},
    )
    for name, entry in results["benchmarks"].items():
        metrics.update({f"eval/{name}/{k}": float(v) for k, v in entry["metrics"].items()})
    if ev.get("mteb_results"):
        write_mteb_files(trained, benchmarks, results, str(cfg.model.name_or_path),
                         str(adapter_dir) if adapter_dir else None, trained.truncate_dim, out_dir)
    return {"metrics": metrics, "results": str(out_dir / "results.json")}


def write_mteb_files(embedder, benchmarks: list, results: dict, model: str, adapter: str | None,
                     truncate_dim: int | None, out_dir) -> list[str]:
    """The STS benchmarks of `results` that stand for MTEB tasks as MTEB result files under <out_dir>/mteb
    (mteb.ResultCache's layout; mmembed.evaluation.mteb_results). Returns their paths."""
    from mmembed.evaluation.mteb_results import model_meta, write_mteb_results

    module = getattr(embedder, "embedder", embedder)  # the Embedder's model, or a baseline module
    meta = model_meta(model, adapter, embed_dim=getattr(embedder, "dim", None), truncate_dim=truncate_dim,
                      modalities=tuple(sorted(getattr(embedder, "modalities", None) or ["text"])),
                      n_parameters=sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else None)
    paths = write_mteb_results(results, benchmarks, Path(out_dir) / "mteb", meta)
    for path in paths:
        log.info("MTEB result: %s", path)
    return [str(p) for p in paths]


def _modality_gap(cfg: DictConfig, trained, out_dir: Path, batch_size: int, progress: bool, logger) -> dict:
    """PCA picture + numbers of the image/text embeddings of held-out pairs, base model vs trained."""
    from mmembed.data.evalsets.captions import read_caption_config
    from mmembed.evaluation.modality_gap import gap_stats, pair_embeddings, plot_modality_gap
    from mmembed.inference import Embedder

    gap_cfg = OmegaConf.to_container(cfg.evaluation.modality_gap, resolve=True)
    bench = read_caption_config(gap_cfg)
    limit = gap_cfg.get("max_pairs")
    base = Embedder(build_embedder(model_spec(cfg, explicit_prompts=False, inference=True, text_only=False,
                                              adapter=None))).eval()
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
