"""Train an embedding model: `python src/train.py experiment=text_only` (see conf/train.yaml)."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("mmembed.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mmembed.errors import MMEmbedError
    from mmembed.run.hparams import quiet_library_logging
    from mmembed.run.training import run_training

    quiet_library_logging()

    try:
        summary = run_training(cfg)
    except MMEmbedError as err:  # a setting or file to fix: one line. Anything else keeps its traceback.
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    # The value a search sweeper (conf/hparams_search) optimises; the fixed grids of conf/ablation ignore it.
    metric = cfg.get("optimized_metric")
    return summary["metrics"].get(metric) if metric else None


if __name__ == "__main__":
    # A native crash (a segfault or C++ abort in a library) prints every thread's Python stack instead of one line.
    faulthandler.enable()
    # Lets configs locate the repository (e.g. the default data root ../shared/data) from any cwd.
    os.environ.setdefault("MMEMBED_ROOT", str(Path(__file__).resolve().parents[1]))
    main()
