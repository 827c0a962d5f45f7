"""Caption a benchmark's images with a model trained to caption, and score the captions.

    python src/caption.py model=mmgem prompt=mmgem adapter=logs/mmgem/runs/<run>/adapters/last
    python src/caption.py ... generation.num_beams=3 images.max_images=100
    python src/caption.py model=mmgem prompt=mmgem adapter=... region.image=dog.jpg region.box=[10,20,200,180]

Writes captions.jsonl (image id, caption, references) and scores.json (BLEU-1..4, CIDEr x100, and which
scorers ran) into the Hydra run folder; with region.image / region.box, region_caption.json.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger("mmembed.caption")


@hydra.main(version_base="1.3", config_path="../conf", config_name="caption")
def main(cfg: DictConfig) -> dict:
    from mmembed.errors import MMEmbedError
    from mmembed.run.captioning import run_captioning
    from mmembed.run.hparams import quiet_library_logging

    quiet_library_logging()
    try:
        result = run_captioning(cfg)
    except MMEmbedError as err:  # a setting or file to fix: one line. Anything else keeps its traceback.
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    if result.get("caption") is not None:  # one region (region.image / region.box)
        log.info("%s %s: %s", result["image"], result["box"], result["caption"])
        return result
    scores = result["scores"]
    log.info("%d images: %s", scores["num_images"],
             "  ".join(f"{k}={scores[k]:.2f}" for k in ("BLEU-4", "CIDEr", "METEOR", "SPICE") if k in scores))
    log.info("captions: %s", result["captions_file"])
    return result


if __name__ == "__main__":
    os.environ.setdefault("MMEMBED_ROOT", str(Path(__file__).resolve().parents[1]))
    main()
