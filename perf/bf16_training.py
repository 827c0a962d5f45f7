"""One training step in `trainer.precision=bf16-mixed` vs `32-true` on CPU, through the real entry point.

    python perf/bf16_training.py                          # default model, 6 steps per run, 3 repeats
    python perf/bf16_training.py --steps 4 --repeats 2 --json /tmp/bf16_training.json
    python perf/bf16_training.py -- model.name_or_path=/path/to/model   # extra Hydra overrides

Each run is `python src/train.py experiment=text_only trainer.precision=P trainer.max_steps=N ~logger ...`
in its own subprocess (the recipe `make train` runs, cut to N steps, no validation, no checkpoint), with
its Hydra run folder in a temporary directory; the numbers are that run's `cost.json` (CostMonitor):
`sec_per_step` (wall clock, mean over the steps after the first, which warms the allocator up), the peak
RSS sampled at step ends, and the process' `ru_maxrss` (model loading included). One more callback,
added by override (`+callbacks.step_cpu_time`, this file's `step_cpu_timer`), writes the process CPU
time (all threads) of the same steps: on a CPU shared with other jobs wall clock mostly measures the
other jobs, CPU time much less so.

The CPU may be shared: precisions alternate A B B A A B ... so drift in the machine's load hits both
alike, the table shows medians over the repeats, and the 1-minute load average is recorded before each
run. Lower s/step is better; `ratio` is bf16-mixed / 32-true.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed")
# What `make train` runs, minus what a timing run does not need: validation, the checkpoint, the logger.
BASE_OVERRIDES = (
    "experiment=text_only",
    "~logger",
    "validate_before_training=false",
    "+trainer.limit_val_batches=0",
    "~callbacks.model_checkpoint",
    "trainer.enable_progress_bar=false",
)
MEASURES = ("sec_per_step", "cpu_sec_per_step", "peak_rss_during_training_mb", "peak_rss_process_mb")
CPU_FILE = "step_cpu_time.json"


def step_cpu_timer(output_file: str):
    """A Lightning callback (made inside the training process, via Hydra `_target_`) that writes the
    process CPU time of every training step to `output_file`."""
    import lightning as L

    class StepCPUTime(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._t0 = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.process_time() - self._t0)

        def on_train_end(self, trainer, pl_module):
            Path(output_file).write_text(json.dumps(self.times))

    return StepCPUTime()


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("inf")


def wait_for_memory(min_gb: float, poll_s: float = 20.0) -> None:
    """On a shared machine, start a run only when it fits: a default-model step peaks near 11 GiB, and
    two such runs beside each other's jobs get the OOM killer's attention."""
    while min_gb and available_gb() < min_gb:
        print(f"  waiting: {available_gb():.1f} GiB available, {min_gb} wanted", file=sys.stderr, flush=True)
        time.sleep(poll_s)


def run_order(repeats: int) -> list[str]:
    """A B B A A B ...: each precision runs first in half the rounds."""
    order = []
    for r in range(repeats):
        order += list(PRECISIONS if r % 2 == 0 else reversed(PRECISIONS))
    return order


def train_command(precision: str, steps: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "src" / "train.py"), *BASE_OVERRIDES, f"trainer.precision={precision}",
            f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}",
            "+callbacks.step_cpu_time._target_=bf16_training.step_cpu_timer",
            f"+callbacks.step_cpu_time.output_file={run_dir / CPU_FILE}", *extra]


def run_once(precision: str, steps: int, run_dir: Path, extra: list[str], threads: int) -> dict:
    path = os.pathsep.join(p for p in (str(REPO / "perf"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(train_command(precision, steps, run_dir, extra), check=False, cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training run ({precision}) failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    cost = json.loads((run_dir / "cost.json").read_text())
    summary = json.loads((run_dir / "train_summary.json").read_text())
    cpu = json.loads((run_dir / CPU_FILE).read_text())[1:]  # the first step is not timed, as in cost.json
    return {"precision": precision, "load_avg_1m": load, "wall_s": time.perf_counter() - started,
            "final_train_loss": summary["metrics"].get("train/loss"), "cpu_sec_per_step": statistics.mean(cpu),
            **{k: cost[k] for k in ("sec_per_step", "peak_rss_during_training_mb", "peak_rss_process_mb", "steps")}}


def medians(runs: list[dict]) -> dict[str, dict[str, float]]:
    return {p: {m: statistics.median(r[m] for r in runs if r["precision"] == p) for m in MEASURES}
            for p in PRECISIONS}


def table(med: dict[str, dict[str, float]]) -> str:
    a, b = (med[p] for p in PRECISIONS)
    rows = [(label, f"{a[key]:.2f}", f"{b[key]:.2f}", f"{b[key] / a[key]:.2f}x")
            for key, label in (("sec_per_step", "s/step, wall (median)"), ("cpu_sec_per_step", "s/step, CPU time (median)"))]
    for key, label in (("peak_rss_during_training_mb", "peak RSS at step ends"),
                       ("peak_rss_process_mb", "peak RSS of the process")):
        rows.append((label, f"{a[key]:.0f} MiB", f"{b[key]:.0f} MiB", f"{b[key] / a[key]:.2f}x"))
    header = ("", *PRECISIONS, "ratio")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per precision, alternating")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per run (0 = torch's default)")
    parser.add_argument("--min-free-gb", type=float, default=0.0,
                        help="before each run, wait until this much memory is available (0 = do not wait)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers and the medians here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3: the first step is not timed and the mean needs two more")

    runs = []
    with tempfile.TemporaryDirectory(prefix="bf16_training_") as tmp:
        for i, precision in enumerate(run_order(args.repeats)):
            wait_for_memory(args.min_free_gb)
            print(f"run {i + 1}/{2 * args.repeats}: {precision} ...", file=sys.stderr, flush=True)
            runs.append(run_once(precision, args.steps, Path(tmp, f"run{i}"), args.overrides, args.threads))
            print(f"  {runs[-1]['sec_per_step']:.2f} s/step wall, {runs[-1]['cpu_sec_per_step']:.2f} CPU, "
                  f"load {runs[-1]['load_avg_1m']:.1f}",
                  file=sys.stderr, flush=True)
    med = medians(runs)
    loads = [r["load_avg_1m"] for r in runs]
    print(f"steps={args.steps} repeats={args.repeats} cpus={os.cpu_count()} "
          f"load average (1 min) before runs: {min(loads):.1f}-{max(loads):.1f}")
    print(table(med))
    for r in runs:
        print(f"  {r['precision']:>10}: {r['sec_per_step']:.2f} s/step wall, {r['cpu_sec_per_step']:.2f} CPU, "
              f"loss {r['final_train_loss']:.4f}, load {r['load_avg_1m']:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": med, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
