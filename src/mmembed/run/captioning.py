"""The captioning run of `src/caption.py`: a benchmark's images -> captions -> scores, written to files."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)


def run_captioning(cfg: DictConfig) -> dict:
    if cfg.get("region") and cfg.region.get("image"):
        return caption_region(cfg)
    from mmembed.evaluation.benchmarks.captioning import caption_and_score
    from mmembed.evaluation.benchmarks.retrieval import CaptionImages
    from mmembed.models.factory import build_embedder
    from mmembed.run.config import model_spec
    from mmembed.run.evaluation import build_benchmark
    from mmembed.run.folders import ensure_writable

    name = _benchmark_choice()
    benchmark = build_benchmark(name, cfg.benchmark)
    if not isinstance(benchmark, CaptionImages):
        raise ConfigError(f"benchmark={name} ({benchmark.task}) has no caption file to caption; pick one of "
                          f"conf/benchmark/ that reads one (e.g. flickr8k_1k_test)")
    if cfg.images.get("max_images"):
        benchmark = dataclasses.replace(benchmark, max_images=int(cfg.images.max_images))
    bench = benchmark.check()  # missing files fail here, before the model loads
    out_dir = ensure_writable(cfg.paths.output_dir)
    embedder = build_embedder(model_spec(cfg, inference=True))
    gen = cfg.generation
    predictions, references, scores = caption_and_score(
        embedder, bench, gen.instruction, int(gen.max_new_tokens), int(gen.num_beams),
        batch_size=int(gen.batch_size), progress=bool(cfg.progress), tokenizer=cfg.scoring.tokenizer,
        java_scorers=bool(cfg.scoring.java_scorers))
    captions_file = Path(out_dir) / "captions.jsonl"
    with open(captions_file, "w", encoding="utf-8") as f:
        for image_id, caption in predictions.items():
            f.write(json.dumps({"image_id": image_id, "caption": caption, "references": references[image_id]}) + "\n")
    result = {"benchmark": bench.name, "model": str(cfg.model.name_or_path),
              "adapter": str(cfg.adapter) if cfg.get("adapter") else None,
              "generation": OmegaConf.to_container(gen, resolve=True), "scores": scores,
              "captions_file": str(captions_file)}
    (Path(out_dir) / "scores.json").write_text(json.dumps(result, indent=2))
    return result


def _benchmark_choice() -> str:
    """The conf/benchmark/ file `benchmark=` selected (the results' benchmark name)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("benchmark") if HydraConfig.initialized() else "benchmark"


def caption_region(cfg: DictConfig) -> dict:
    """`region.image=<file> region.box=[x1,y1,x2,y2]` (pixels of that file): one caption of that box
    (MM-GEM's RoI-pooled prefix), written to region_caption.json; the model needs model=mmgem."""
    from mmembed.data.images import load_image
    from mmembed.inference.captioner import Captioner
    from mmembed.models.factory import build_embedder
    from mmembed.run.config import model_spec
    from mmembed.run.folders import ensure_writable

    path, box = Path(str(cfg.region.image)), cfg.region.get("box")
    if not path.is_file():
        raise ConfigError(f"region.image={path}: no such file")
    if box is None or len(box) != 4:
        raise ConfigError(f"region.box={box}: give the box as [x1,y1,x2,y2] in pixels of {path.name}")
    image = load_image(path)  # before the model loads: a bad file fails in seconds
    out_dir = ensure_writable(cfg.paths.output_dir)
    embedder = build_embedder(model_spec(cfg, inference=True))
    gen = cfg.generation
    caption = Captioner(embedder, gen.instruction, gen.max_new_tokens, gen.num_beams).caption(
        [image], boxes=[[float(v) for v in box]])[0]
    result = {"image": str(path), "box": [float(v) for v in box], "caption": caption,
              "scores": None, "generation": OmegaConf.to_container(gen, resolve=True)}
    (Path(out_dir) / "region_caption.json").write_text(json.dumps(result, indent=2))
    return result
