"""Compose the project's Hydra configs in tests, as `python src/train.py ...` would."""

from __future__ import annotations

import os
import subprocess
import sys

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from mmembed.hardware import register_resolvers
from tests.conftest import REPO

CONF = str(REPO / "conf")


def compose_train(overrides: list[str], output_dir) -> object:
    """The composed train config with hydra's runtime output dir pointed at `output_dir`."""
    register_resolvers()  # ${mmembed_cpu_precision:} etc., as src/train.py has them (a test may run alone)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_train_with_hydra(overrides: list[str]) -> object:
    """The composed train config with its `hydra` section (sweeper params, mode, group choices) kept."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def run_train_cli(args: list[str], cwd=REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def build_embedder(cfg, trainable: bool = False):
    """The model factory on a composed config, as the training and evaluation runs call it."""
    from mmembed.models.factory import build_embedder as factory
    from mmembed.run.config import lora_spec, model_spec

    return factory(model_spec(cfg, explicit_prompts=False), trainable=trainable, lora=lora_spec(cfg),
                   train_projector=bool(cfg.get("train_projector")))
