"""Embed a corpus into shards and an index: `python src/embed.py input.images=DIR out=DIR` (conf/embed.yaml).

Runs `Trainer.predict` (conf/trainer: cpu, gpu, ddp) where every rank embeds its shards; a rerun with the
same out= resumes. See docs/inference.md; the Lightning part is mmembed.lit.predict.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mmembed.embed")


def load_embedder(spec, truncate_dim: int | None = None):
    """Model + adapter + prompts from the one model factory, with its prompt precedence (prompts given on
    the command line > saved with the adapter > saved with the model > the config's default)."""
    from mmembed.inference import Embedder
    from mmembed.models.factory import build_embedder

    return Embedder(build_embedder(spec), truncate_dim=truncate_dim)


def run(cfg: DictConfig):
    from mmembed.errors import ConfigError
    from mmembed.inference.cli import read_corpus
    from mmembed.lit.predict import embed_corpus  # imports Lightning (see main)
    from mmembed.run.config import model_spec

    if OmegaConf.is_missing(cfg, "out"):
        raise ConfigError("set out=FOLDER: where the shards and the index go (a rerun with the same out= resumes)")
    corpus = read_corpus(**cfg.input)  # bad input files stop here, before the model loads
    spec = model_spec(cfg, inference=True)
    embedder = load_embedder(spec, cfg.get("truncate_dim"))
    summary = embed_corpus(
        embedder, corpus, cfg.out, partial(hydra.utils.instantiate, cfg.trainer), model=cfg.model.name_or_path,
        adapter=cfg.adapter, dtype=spec.dtype, kind=cfg.kind, batch_size=cfg.batch_size,
        shard_size=cfg.shard_size, on_error=cfg.on_error, num_workers=cfg.num_workers, overwrite=cfg.overwrite,
        faiss_kind=cfg.faiss.kind, faiss_options=OmegaConf.to_container(cfg.faiss.options),
    )
    if summary is not None:  # rank 0
        log.info("wrote %d x %d vectors to %s (%d embedded now, %d from earlier runs, %d skipped; %.1f s, %.1f/s)",
                 summary.embedded, summary.dim, Path(cfg.out).resolve(), summary.new - summary.skipped,
                 summary.inputs - summary.new, summary.skipped, summary.seconds,
                 summary.new / max(summary.seconds, 1e-9))
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="embed")
def main(cfg: DictConfig) -> None:
    import mmembed.lit.predict  # noqa: F401  Lightning adds its console handlers on import: quiet them after
    from mmembed.errors import MMEmbedError
    from mmembed.run.hparams import quiet_library_logging

    quiet_library_logging()
    try:
        run(cfg)
    except MMEmbedError as err:  # a setting or file to fix: one line. Anything else keeps its traceback.
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("MMEMBED_ROOT", str(Path(__file__).resolve().parents[1]))
    main()
