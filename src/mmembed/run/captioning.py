"""The captioning run of `src/caption.py`: a benchmark's images -> captions -> scores, written to files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)


def run_captioning(cfg: DictConfig) -> dict:
    from mmembed.data.benchmarks.captions import read_caption_config
    from mmembed.data.images import load_image
    from mmembed.inference.captioner import Captioner
    from mmembed.metrics.captioning import caption_scores
    from mmembed.models.factory import build_embedder
    from mmembed.run.config import model_spec
    from mmembed.run.folders import ensure_writable

    benchmarks = cfg.suite.benchmarks
    if cfg.benchmark not in benchmarks:
        raise ConfigError(f"benchmark={cfg.benchmark!r} is not in suite {cfg.suite.get('suite')!r} "
                          f"(it has {sorted(benchmarks)})")
    bench_cfg = OmegaConf.to_container(benchmarks[cfg.benchmark], resolve=True)
    if cfg.images.get("max_images"):
        bench_cfg["max_images"] = int(cfg.images.max_images)
    bench = read_caption_config(bench_cfg)  # missing files fail here, before the model loads
    out_dir = ensure_writable(cfg.paths.output_dir)
    embedder = build_embedder(model_spec(cfg, inference=True))
    gen = cfg.generation
    captioner = Captioner(embedder, gen.instruction, gen.max_new_tokens, gen.num_beams)
    images = [load_image(path) for path in bench.images]
    captions = captioner.caption(images, batch_size=int(gen.batch_size), progress=bool(cfg.progress))
    references: dict[str, list[str]] = {image_id: [] for image_id in bench.image_ids}
    for text, image in zip(bench.captions, bench.caption_image):
        references[bench.image_ids[image]].append(text)
    predictions = dict(zip(bench.image_ids, captions))
    scores = caption_scores(predictions, references, tokenizer=cfg.scoring.tokenizer,
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
