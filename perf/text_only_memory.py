"""Peak memory and step time of text-pair training with and without the vision tower in memory.

Runs `src/train.py experiment=text_only` twice in fresh processes (model.text_only=true / false),
same seed, data and steps, and prints each run's cost.json side by side with the ratio.

    python perf/text_only_memory.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(text_only: bool, steps: int, batch_size: int, model: str, out: Path) -> dict:
    cmd = [
        sys.executable, str(REPO / "src" / "train.py"), "experiment=text_only", f"model.text_only={str(text_only).lower()}",
        f"model.name_or_path={model}", f"trainer.max_steps={steps}", f"data.batch_size={batch_size}",
        "validate_before_training=false", "val=none", "~logger", "callbacks.lr_monitor=null",
        f"hydra.run.dir={out}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    parameters = json.loads((out / "train_summary.json").read_text())
    return {**json.loads((out / "cost.json").read_text()), "global_step": parameters["global_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for text_only in (False, True):
            rows[text_only] = run(text_only, args.steps, args.batch_size, args.model, Path(tmp) / f"text_only_{text_only}")
    keys = ["vision_tower_in_memory", "rss_at_train_start_mb", "peak_rss_during_training_mb", "peak_rss_process_mb", "sec_per_step"]
    print("| measure | with vision tower | text_only | ratio |\n|---|---|---|---|")
    for key in keys:
        a, b = rows[False][key], rows[True][key]
        ratio = f"{b / a:.3f}" if isinstance(a, float) and a else ""
        fmt = (lambda v: f"{v:.1f}") if isinstance(a, float) else str
        print(f"| {key} | {fmt(a)} | {fmt(b)} | {ratio} |")


if __name__ == "__main__":
    main()
