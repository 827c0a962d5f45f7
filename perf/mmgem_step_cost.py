"""What MM-GEM's PoolAggregator saves: image tokens per image, s/step and peak memory of a joint step.

Arms: `model.extension.grid` g in --grids (default 3 and 7). At g = 7 the aggregator's adaptive pooling
of the 7x7 EfficientNet-Lite0 map is the identity, so that arm is MM-GEM without the aggregator: 49
prefix tokens, the default model's own count. Each arm is the training path itself: `experiment=mmgem`
(LoRA, [EMB], h1, h2), batches of `data=image_text` from its DataModule and collator, the joint objective
(symmetric InfoNCE of h1 images vs [EMB] texts + captioning on the prefix), backward, AdamW.

Each arm runs in its own child process (so its peak RSS is its own), the arms alternate over --rounds
rounds (the CPU is shared: alternation keeps load drift out of the ratio), the first step of each run is
a warm-up, and the medians over rounds are reported with the ratio to the last grid (no aggregator).

    python perf/mmgem_step_cost.py --grids 3 7 --steps 3 --rounds 2 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(grid: int, steps: int, batch_size: int, overrides: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmembed.models.factory import build_embedder
    from mmembed.objectives import StepContext
    from mmembed.run.config import lora_spec, model_spec

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", ["experiment=mmgem", f"model.extension.grid={grid}", f"data.batch_size={batch_size}",
                                "data.num_workers=0", *overrides])
    objective = instantiate(cfg.objective, _convert_="all")
    embedder = build_embedder(model_spec(cfg, explicit_prompts=False), trainable=True, lora=lora_spec(cfg))
    datamodule = instantiate(cfg.data, featurizer=embedder.featurizer, objective=objective)
    datamodule.setup("fit")
    batches = [b["features"] for b in islice(iter(datamodule.train_dataloader()), steps + 1)]
    image_tokens = int((batches[0]["captioning"]["input_ids"][0] == embedder.model.config.image_token_id).sum())
    embedder.train()
    embedder.backbone.body.vision_tower.eval()  # frozen, BatchNorm statistics fixed (as the LightningModule does)
    optimizer = torch.optim.AdamW([p for p in embedder.parameters() if p.requires_grad], lr=1e-4)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for features in batches:
        start = time.perf_counter()
        objective(embedder, features, StepContext(training=True)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"grid": grid, "image_tokens_per_image": image_tokens, "sec_per_step": statistics.median(times[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_steps_mb": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.name_or_path=...")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.overrides)))
        return
    runs: dict[int, list[dict]] = {g: [] for g in args.grids}
    for r in range(args.rounds):
        for grid in (args.grids if r % 2 == 0 else list(reversed(args.grids))):
            cmd = [sys.executable, __file__, "--child", str(grid), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), *args.overrides]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            runs[grid].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r} grid {grid}: {runs[grid][-1]}", flush=True)
    base = args.grids[-1]
    median = {g: {k: statistics.median(run[k] for run in rs) for k in ("sec_per_step", "peak_rss_mb")}
              for g, rs in runs.items()}
    print(f"\nbatch {args.batch_size} image-caption pairs, median of {args.rounds} runs x {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"| grid | image tokens per image | s / step | peak RSS (MB) | s/step vs grid {base} | peak RSS vs grid {base} |")
    print("|---|---|---|---|---|---|")
    for g in args.grids:
        m = median[g]
        print(f"| {g} | {runs[g][0]['image_tokens_per_image']} | {m['sec_per_step']:.2f} | {m['peak_rss_mb']:.0f} | "
              f"{m['sec_per_step'] / median[base]['sec_per_step']:.2f}x | {m['peak_rss_mb'] / median[base]['peak_rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
