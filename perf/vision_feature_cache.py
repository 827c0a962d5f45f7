"""Step time of projector alignment (`experiment=align`) with and without `model.vision_feature_cache`.

Both arms are the training path itself: batches from `data=image_text`'s DataModule and collator (Flickr8k
train split, JPEGs opened and preprocessed by the featurizer), the configured objective (experiment=align's
own by default: symmetric caption <-> image InfoNCE) on the embedder `build_embedder` makes with
`train_projector=true` (LLM and tower frozen, the tower in eval mode, as the LightningModule sets it), AdamW on the projector. The cached arm routes the
tower through `TowerFeatureCache` (mmembed.models.vision_feature_cache), filled by one pass over the
batches first (timed: the one-off cost); the uncached arm runs the tower every step. Steps alternate
between the arms on the same batches (the CPU is shared: alternation keeps load drift out of the
ratio), the first step of each arm is a warm-up, and both arms' losses are checked equal first.

    python perf/vision_feature_cache.py --steps 6 --batch-size 16
    python perf/vision_feature_cache.py --objective captioning
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mmembed.models.factory import build_embedder
from mmembed.models.vision_feature_cache import install_tower_cache
from mmembed.objectives import StepContext
from mmembed.run.config import lora_spec, model_spec

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm (after one warm-up each)")
    parser.add_argument("--objective", default=None, help="a conf/objective group option (default: experiment=align's)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --), e.g. model.name_or_path=...")
    args = parser.parse_args()

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        chosen = [f"objective={args.objective}"] if args.objective else []
        # The factory's own cache is off: this script installs the one it times (its `compute` is the bare tower).
        cfg = compose("train", ["experiment=align", *chosen, "model.vision_feature_cache=false",
                                f"data.batch_size={args.batch_size}", "data.num_workers=0", *args.overrides])
    objective = instantiate(cfg.objective, _convert_="all")
    spec = model_spec(cfg, explicit_prompts=False)
    embedder = build_embedder(spec, trainable=True, lora=lora_spec(cfg), train_projector=True)
    datamodule = instantiate(cfg.data, featurizer=embedder.featurizer, objective=objective)
    datamodule.setup("fit")
    batches = [b["features"] for b in islice(iter(datamodule.train_dataloader()), args.steps + 1)]

    embedder.train()
    body = next(m for m in embedder.modules() if hasattr(m, "vision_tower") and hasattr(m, "get_vision_features"))
    body.vision_tower.eval()
    optimizer = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=1e-4)

    with tempfile.TemporaryDirectory() as tmp:
        cache = install_tower_cache(embedder.model, tmp)
        arms = {"uncached": cache.compute, "cached": cache}

        def step(arm: str, features: dict) -> float:
            body.get_vision_features = arms[arm]
            start = time.perf_counter()
            objective(embedder, features, StepContext(training=True)).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        t0 = time.perf_counter()
        with torch.no_grad():  # the one-off pass that fills the cache (the tower runs once per image)
            for features in batches:
                body.get_vision_features = cache
                objective(embedder, features, StepContext(training=False))
        fill_s = time.perf_counter() - t0
        filled = cache.misses

        with torch.no_grad():  # the same losses both ways before anything is timed
            check = {}
            for arm in arms:
                body.get_vision_features = arms[arm]
                check[arm] = float(objective(embedder, batches[0], StepContext(training=False)).loss)
        assert abs(check["cached"] - check["uncached"]) < 1e-5, check

        times = {arm: [] for arm in arms}
        for i, features in enumerate(batches):
            for arm in (("uncached", "cached") if i % 2 == 0 else ("cached", "uncached")):
                seconds = step(arm, features)
                if i > 0:  # step 0 is each arm's warm-up
                    times[arm].append(seconds)
        assert cache.misses == filled, "the timed cached steps must all be hits"
    median = {arm: statistics.median(t) for arm, t in times.items()}
    print(json.dumps({
        "model": spec.name_or_path, "objective": cfg.objective._target_, "batch_size": args.batch_size,
        "timed_steps_per_arm": args.steps, "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "cache_fill_s": round(fill_s, 2), "distinct_images_filled": filled, "check_losses": check,
        "sec_per_step": {arm: [round(t, 2) for t in ts] for arm, ts in times.items()},
        "median_sec_per_step": {arm: round(t, 2) for arm, t in median.items()},
        "cached_over_uncached": round(median["cached"] / median["uncached"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
