"""What image validation adds to `make train`'s wall time: the same command with and without it.

    python perf/validation_overhead.py                       # make train's recipe, 2 repeats of each arm
    python perf/validation_overhead.py --repeats 3 --json perf/results/validation_overhead.json
    python perf/validation_overhead.py -- trainer.max_steps=10   # extra Hydra overrides for both arms

Each run is `python src/train.py experiment=text_only ...` in its own subprocess (what `make train` runs, with
its validation before the first step and at the end, checkpoint and TensorBoard logger included), its Hydra run
folder in a temporary directory. The arms differ only in `val=`: `with` is the experiment's own validation sets
(STS-B dev + Flickr8k dev images), `without` is `val=stsb_dev` (STS-B dev alone, text only). Wall time is the
subprocess' whole life (model loading included), as a user waits for it.

The CPU may be shared: arms alternate A B B A A B ... so drift in the machine's load hits both alike; the table
shows medians over the repeats and the ratio with / without (the issue's target: <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import alternating  # perf/, this script's folder

REPO = Path(__file__).resolve().parents[1]
ARMS = {"with": [], "without": ["val=stsb_dev"]}
QUIET = ("trainer.enable_progress_bar=false",)


def run_once(arm: str, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"{arm}-{time.monotonic_ns()}"
    cmd = [sys.executable, str(REPO / "src" / "train.py"), "experiment=text_only", f"hydra.run.dir={out}",
           *QUIET, *ARMS[arm], *extra]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{arm} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    metrics = summary["metrics"]
    return {"arm": arm, "wall_s": round(wall, 1), "load_1min": round(load, 2),
            "val_sets": sorted({k.split("/")[1] for k in metrics if k.startswith("val/") and k.count("/") == 2}),
            "stsb_dev": metrics.get("val/stsb_dev/spearman"), "t2i_R@10": metrics.get("val/flickr8k_dev/t2i_R@10")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the runs and medians here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both arms (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = alternating.run_alternating("with", "without", args.repeats, lambda arm: run_once(arm, args.overrides, Path(tmp)))
    medians = alternating.medians(runs, "wall_s")
    result = {"overrides": args.overrides, "repeats": args.repeats, "runs": runs,
              "median_wall_s": medians, "ratio_with_over_without": round(medians["with"] / medians["without"], 3)}
    print(f"| arm | median wall s |\n|---|---|\n| with image validation | {medians['with']:.1f} |\n"
          f"| without (val=stsb_dev) | {medians['without']:.1f} |\nratio with / without: "
          f"{result['ratio_with_over_without']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
