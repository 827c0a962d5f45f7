"""Metrics a run chooses by (checkpoint monitor, early stopping, a search's `optimized_metric`) checked against
the metrics its validation sets will log, before the model loads.

A monitor naming a metric no set logs would otherwise fail late (EarlyStopping at the first validation) or
silently (ModelCheckpoint keeps only last.ckpt; a search gets no value back). The names come from the sets
themselves: each set's validation plan is scored once on a placeholder table (one random vector per input), so
the keys are exactly those its scoring function returns during training, plus `inputs` and its `log_as` names.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from mmembed.errors import ConfigError


def validation_metrics(validation) -> set[str]:
    """Every `val/...` key the validation sets (mmembed.lit.validation.ValidationSets, or None) log."""
    if validation is None:
        return set()
    names = set()
    generator = torch.Generator().manual_seed(0)
    for name, plan in validation.setup().items():
        n = len(plan.items)
        placeholder = torch.nn.functional.normalize(torch.randn(n, 8, generator=generator), dim=-1)
        names.update(f"val/{name}/{metric}" for metric in plan.score(torch.arange(n), placeholder))
        names.add(f"val/{name}/inputs")
        names.update(validation.log_as(name).values())
    return names


def search_is_on() -> bool:
    """True under a sweeper other than Hydra's basic one (a search such as hparams_search=optuna_retrieval):
    it then needs `optimized_metric` back from every trial."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().runtime.choices.get("hydra/sweeper", "basic") != "basic"


def chosen_metrics(cfg: DictConfig, search: bool | None = None) -> dict[str, str]:
    """{setting: metric} of the `val/` metrics this run chooses by: every callback's `monitor` and, in a search,
    `optimized_metric` (other metrics, e.g. train/loss, are the trainer's own to check)."""
    chosen = {}
    for key, callback in (cfg.get("callbacks") or {}).items():
        monitor = callback.get("monitor") if callback is not None and hasattr(callback, "get") else None
        if isinstance(monitor, str) and monitor.startswith("val/"):
            chosen[f"callbacks.{key}.monitor"] = monitor
    if search_is_on() if search is None else search:
        metric = cfg.get("optimized_metric")
        if not metric:
            raise ConfigError("optimized_metric is null: a search (hparams_search=...) maximises it; "
                              "name a validation metric, e.g. optimized_metric=val/stsb_dev/spearman")
        if str(metric).startswith("val/"):
            chosen["optimized_metric"] = str(metric)
    return chosen


def check_monitors(cfg: DictConfig, validation, search: bool | None = None) -> None:
    """Raise ConfigError (one line) when a chosen `val/` metric is none that the validation sets log."""
    chosen = chosen_metrics(cfg, search)
    known = validation_metrics(validation)
    if not known:  # val=none: the checkpoint monitor saves last.ckpt only, val=none's documented behaviour
        chosen.pop("callbacks.model_checkpoint.monitor", None)
    unknown = {setting: metric for setting, metric in chosen.items() if metric not in known}
    if not unknown:
        return
    sets = f"val=[{','.join(validation.names)}]" if validation is not None and validation.names else "val=none"
    listed = ", ".join(sorted(known)) or "none"
    what = "; ".join(f"{setting}={metric}" for setting, metric in unknown.items())
    raise ConfigError(f"{what}: no validation set logs it ({sets}); name one of the validation metrics "
                      f"or add the set that logs it to val=: {listed}")
