"""Choosing by a validation metric: the Optuna search (conf/hparams_search/optuna_retrieval.yaml), the checkpoint
monitor and early stopping (conf/callbacks/early_stopping.yaml) on any `val/<set>/<metric>`, and the check that
refuses, before the model loads, a metric no validation set logs (mmembed.run.monitors).

- the search config gives Optuna the intended distributions over settings that exist in the run's config;
- a 3-trial search on a tiny model samples 3 different settings and reports the best of the values its trials
  returned (each trial's train_summary.json);
- a checkpoint monitor on an image metric keeps the checkpoint of the validation where that metric peaked;
- early stopping composes on top of the default callbacks and follows the checkpoint monitor;
- the validation metrics a run will log are listed exactly; an unknown monitor fails in one line naming them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmembed.errors import ConfigError
from mmembed.lit.validation import ValidationSets
from mmembed.run.monitors import check_monitors, validation_metrics
from tests.conftest import REPO
from tests.pipeline.helpers import compose_train, compose_train_with_hydra

SEARCH = "hparams_search=optuna_retrieval"
FLICKR = ["val.sets.flickr8k_dev.limit=12", "val.sets.flickr8k_dev.batch_size=16"]  # 12 images + 60 captions


def tiny_run(model_dir) -> list[str]:
    """experiment=text_only on the tiny SmolLlava with its vision tower (image sets can validate)."""
    return ["experiment=text_only", "model=smol_llava", "model.text_only=false", f"model.name_or_path={model_dir}"]


def _sets(cfg) -> ValidationSets:
    return ValidationSets(instantiate(cfg.val.sets, _convert_="all"), seed=int(cfg.seed))


def test_the_search_gives_optuna_the_intended_ranges_over_existing_settings():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution, UniformDistribution

    cfg = compose_train_with_hydra([SEARCH, "experiment=text_only"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.direction, sweeper.sampler._target_, sweeper.sampler.seed) == (
        "maximize", "optuna.samplers.TPESampler", 42)
    assert cfg.optimized_metric == "val/flickr8k_dev/t2i_R@10"
    checkpoint = cfg.callbacks.model_checkpoint
    assert (checkpoint.monitor, checkpoint.mode) == (cfg.optimized_metric, "max")
    parser = OverridesParser.create()
    distributions = {key: create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
                     for key, value in sweeper.params.items()}
    assert distributions == {"objective.temperature": UniformDistribution(0.01, 0.1),
                             "optim.lr": LogUniformDistribution(1e-5, 1e-3),
                             "lora.r": CategoricalDistribution((8, 16, 32, 64))}
    for key in distributions:  # a misspelt key would add a new setting nothing reads
        assert OmegaConf.select(cfg, key) is not None, key
    # following the metric: optimising another one moves the checkpoint monitor with it
    other = compose_train_with_hydra([SEARCH, "optimized_metric=val/stsb_dev/spearman"])
    assert other.callbacks.model_checkpoint.monitor == "val/stsb_dev/spearman"


def test_early_stopping_adds_to_the_default_callbacks_and_follows_the_checkpoint_monitor(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    default = compose_train([], tmp_path)
    cfg = compose_train(["callbacks=early_stopping", "callbacks.model_checkpoint.monitor=val/flickr8k_dev/t2i_R@10"],
                        tmp_path)
    assert set(cfg.callbacks) == set(default.callbacks) | {"early_stopping"}
    stopper = instantiate(cfg.callbacks.early_stopping)
    assert isinstance(stopper, EarlyStopping)
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/flickr8k_dev/t2i_R@10", "max", 3)
    own = compose_train(["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/stsb_dev/inputs",
                         "callbacks.early_stopping.mode=min", "callbacks.early_stopping.patience=1"], tmp_path)
    stopper = instantiate(own.callbacks.early_stopping)
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/stsb_dev/inputs", "min", 1)
    assert own.callbacks.model_checkpoint.monitor == "val/sts_spearman"  # unchanged


def test_the_validation_metrics_are_listed_from_the_sets(data_root, tmp_path):
    cfg = compose_train(["val=[stsb_dev,flickr8k_dev,cirr_local]", *FLICKR], tmp_path)
    recall = {f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
    cirr = {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"}
    assert validation_metrics(_sets(cfg)) == {
        "val/sts_spearman", "val/stsb_dev/spearman", "val/stsb_dev/inputs", "val/flickr8k_dev/inputs",
        "val/cirr_local/inputs", *(f"val/flickr8k_dev/{m}" for m in recall), *(f"val/cirr_local/{m}" for m in cirr)}
    assert validation_metrics(None) == set()


def test_monitors_are_checked_against_the_sets_of_val(data_root, tmp_path):
    flickr = compose_train(["val=[flickr8k_dev]", *FLICKR, "callbacks=early_stopping",
                            "callbacks.model_checkpoint.monitor=val/flickr8k_dev/i2t_R@5"], tmp_path)
    check_monitors(flickr, _sets(flickr), search=False)  # both monitors exist
    with pytest.raises(ConfigError) as err:  # the default optimized_metric is STS-B's: not logged here
        check_monitors(flickr, _sets(flickr), search=True)
    assert str(err.value).startswith(
        "optimized_metric=val/sts_spearman: no validation set logs it (val=[flickr8k_dev]); name one of")
    # val=none: the default checkpoint monitor saves last.ckpt only (as before); early stopping cannot work
    none = compose_train(["val=none"], tmp_path)
    check_monitors(none, None, search=False)
    stopping = compose_train(["val=none", "callbacks=early_stopping"], tmp_path)
    refused = r"^callbacks.early_stopping.monitor=val/sts_spearman: no validation set logs it \(val=none\).*: none$"
    with pytest.raises(ConfigError, match=refused):
        check_monitors(stopping, None, search=False)
    # metrics outside val/ (e.g. train/loss) are the trainer's to check
    train = compose_train(["val=none", "callbacks=early_stopping", "callbacks.model_checkpoint.monitor=train/loss",
                           "callbacks.model_checkpoint.mode=min"], tmp_path)
    check_monitors(train, None, search=False)


@pytest.mark.slow  # builds the tiny model folder (its featurizer is read; its weights must not be)
def test_an_unknown_monitor_fails_in_one_line_before_the_model_loads(tiny_smol_llava_dir, tmp_path, monkeypatch):
    import mmembed.run.training as training

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the monitor was checked")

    monkeypatch.setattr(training, "build_embedder", no_model)
    cfg = compose_train([*tiny_run(tiny_smol_llava_dir), "data.train_limit=16", "val=[stsb_dev,flickr8k_dev]",
                         *FLICKR,
                         "callbacks.model_checkpoint.monitor=val/flickr8k_dev/t2i_R@100"], tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        training.run_training(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("callbacks.model_checkpoint.monitor=val/flickr8k_dev/t2i_R@100: no validation set logs "
                              "it (val=[stsb_dev,flickr8k_dev])")
    listed = message.split(": ")[-1].split(", ")
    assert "val/flickr8k_dev/t2i_R@10" in listed and "val/stsb_dev/spearman" in listed and len(listed) == 10


def _csv_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r.get(key)), key=lambda r: int(r["step"]))
    return [float(r[key]) for r in rows]


@pytest.mark.slow  # ~30 s: 4 steps of a tiny model with its vision tower, validating on 12 Flickr8k images each step
def test_a_checkpoint_monitor_on_an_image_metric_keeps_that_metrics_best(tiny_smol_llava_dir, tmp_path):
    from mmembed.run.training import run_training

    monitor = "val/flickr8k_dev/t2i_R@1"
    run = tmp_path / "run"
    run_training(compose_train(
        [*tiny_run(tiny_smol_llava_dir), "val=[flickr8k_dev]", *FLICKR, "trainer.max_steps=4",
         "trainer.val_check_interval=1", "data.batch_size=4",
         "data.train_limit=32", "optim.lr=1e-2", "optim.warmup_steps=0", "validate_before_training=false",
         "logger=csv", "trainer.enable_progress_bar=false", f"callbacks.model_checkpoint.monitor={monitor}"], run))
    values = _csv_column(run, monitor)  # one per validation, after steps 1..4
    assert len(values) == 4 and len(set(values)) > 1  # the metric moved: "best" picks one validation
    best_step = values.index(max(values)) + 1  # ties keep the first (a later equal value is no improvement)
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*.ckpt"))
    assert kept == [f"step-{best_step}.ckpt"]  # save_top_k=1: that validation's checkpoint only
    assert torch.load(run / "checkpoints" / kept[0], weights_only=True, map_location="cpu")["global_step"] == best_step
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    (state,) = [s for name, s in last["callbacks"].items() if name.startswith("ModelCheckpoint")]
    assert state["monitor"] == monitor and float(state["best_model_score"]) == pytest.approx(max(values))
    assert Path(state["best_model_path"]).name == kept[0]


@pytest.mark.slow  # ~90 s: one src/train.py process running 3 trials of a tiny model with its vision tower
def test_a_three_trial_search_reports_the_best_trial(tiny_smol_llava_dir, tmp_path):
    sweep = tmp_path / "sweep"
    # The shipped search with a 3-trial budget on a tiny model. It optimises STS-B dev's Spearman (continuous:
    # 2 steps of a tiny model rarely move a recall on 12 images) while Flickr8k dev validates as in the docs.
    args = ["-m", SEARCH, *tiny_run(tiny_smol_llava_dir), "hydra.sweeper.n_trials=3",
            "optimized_metric=val/stsb_dev/spearman", "val=[stsb_dev,flickr8k_dev]",
            *FLICKR, "val.sets.stsb_dev.limit=40", "trainer.max_steps=2", "optim.warmup_steps=0",
            "data.batch_size=4", "data.train_limit=16", "validate_before_training=false", "logger=csv",
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(REPO / "src" / "train.py"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1", "2"]
    sampled, returned = [], []
    for trial in trials:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        config = OmegaConf.load(trial / ".hydra" / "config.yaml")  # what the trial ran with
        params = {"objective.temperature": float(overrides["objective.temperature"]),
                  "optim.lr": float(overrides["optim.lr"]), "lora.r": int(overrides["lora.r"])}
        # each sampled value reached the trial's config, inside the configured ranges
        assert params == {key: OmegaConf.select(config, key) for key in params}
        assert 0.01 <= params["objective.temperature"] <= 0.1 and 1e-5 <= params["optim.lr"] <= 1e-3
        assert params["lora.r"] in (8, 16, 32, 64)
        assert OmegaConf.select(config, "callbacks.model_checkpoint.monitor") == "val/stsb_dev/spearman"
        sampled.append(params)
        returned.append(json.loads((trial / "train_summary.json").read_text())["metrics"]["val/stsb_dev/spearman"])
    assert len({(p["objective.temperature"], p["optim.lr"]) for p in sampled}) == 3  # three different trials
    assert len(set(returned)) == 3  # ... with different results: the best is one of them, not a tie
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(returned))
    assert results["best_params"] in [p for p, v in zip(sampled, returned) if v == max(returned)]
