"""What embedding each distinct target once saves a UniME stage-2 step: the same steps with and without it.

    python perf/target_dedup.py                                   # 6 steps per run, 2 repeats of each arm
    python perf/target_dedup.py --repeats 3 --steps 8 --json perf/results/target_dedup.json
    python perf/target_dedup.py -- model=smol_llava_label_words    # extra Hydra overrides for both arms

Each run is `python src/train.py experiment=unime_stage2 ...` in its own subprocess (mini-MMEB training rows in
uniform batches of 16, the hard-negative loss), its Hydra folder in a temporary directory, no validation; the arms
differ only in `objective.dedup_targets` (true: one forward per distinct (text, image) target of the batch, the
rows expanded back before the loss; false: one forward per row). The seed fixes the batches, so both arms see the
same rows. Reported: the training callback's seconds per step (forward + backward, the first step left out) and
the batch's distinct targets out of its 16 (train/distinct_targets, mean over the steps), medians over repeats,
and the ratio with / without. The arms alternate A B B A ... so drift in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alternating import medians, run_alternating  # perf/, this script's folder

REPO = Path(__file__).resolve().parents[1]
ARMS = {"dedup": ["objective.dedup_targets=true"], "per_row": ["objective.dedup_targets=false"]}
FIXED = ("experiment=unime_stage2", "val=none", "validate_before_training=false", "trainer.val_check_interval=null",
         "trainer.enable_progress_bar=false", "logger=csv")


def _mean_logged(run: Path, key: str) -> float | None:
    values = []
    for path in run.rglob("metrics.csv"):
        with open(path) as f:
            values += [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    return statistics.fmean(values) if values else None


def run_once(arm: str, steps: int, extra: list[str], workdir: Path) -> dict:
    out = workdir / f"{arm}-{time.monotonic_ns()}"
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *FIXED, f"trainer.max_steps={steps}",
           "trainer.log_every_n_steps=1", f"hydra.run.dir={out}", *ARMS[arm], *extra]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cost = json.loads((out / "train_summary.json").read_text())["cost"]
    return {"arm": arm, "sec_per_step": round(cost["sec_per_step"], 3), "steps": cost["steps"],
            "distinct_targets": _mean_logged(out, "train/distinct_targets"),
            "loss": _mean_logged(out, "train/loss"), "load_1min": round(load, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write the runs and medians here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both arms (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_alternating("dedup", "per_row", args.repeats,
                               lambda arm: run_once(arm, args.steps, args.overrides, Path(tmp)))
    med = medians(runs, "sec_per_step")
    distinct = statistics.fmean(r["distinct_targets"] for r in runs if r["distinct_targets"] is not None)
    result = {"overrides": args.overrides, "repeats": args.repeats, "steps": args.steps, "runs": runs,
              "median_sec_per_step": med, "distinct_targets_per_16": round(distinct, 2),
              "ratio_dedup_over_per_row": round(med["dedup"] / med["per_row"], 3)}
    print(f"| arm | median s/step |\n|---|---|\n| one forward per distinct target | {med['dedup']:.2f} |\n"
          f"| one forward per row | {med['per_row']:.2f} |\ndistinct targets per batch of 16: {distinct:.2f}; "
          f"ratio dedup / per row: {result['ratio_dedup_over_per_row']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
