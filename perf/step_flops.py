"""How close to the machine one training step runs: its FLOPs, FLOP/s, the matmul peak, the framework's overhead.

    python perf/step_flops.py                                 # text_only and image_text, 4 timed steps, 2 repeats
    python perf/step_flops.py --experiments text_only --steps 6 --repeats 3 --json /tmp/step_flops.json
    python perf/step_flops.py --profile 3                     # + torch.profiler's top ops over 3 steps
    python perf/step_flops.py -- model.name_or_path=/path/to/model   # extra Hydra overrides for every run
    python perf/step_flops.py --baseline lora.dropout=0                # + Trainer.fit runs with these overrides

For each experiment (`experiment=text_only`, `experiment=image_text`: the default model, the recipes' batch
sizes from conf/data/*.yaml), the objects are built the way `mmembed.run.training.run_training` builds them
from the config composed with `hydra.compose` (objective, featurizer, DataModule and its collator, embedder
with LoRA), and one real batch of the training dataloader is used:

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` around the forward (the objective's loss, under the
  trainer's precision: `torch.autocast("cpu", bfloat16)` for bf16-mixed, as Lightning's plugin does) and
  the backward of that batch. The optimizer step (elementwise) is not counted.
- GEMM shapes: every 2-D matmul (aten.mm / aten.addmm) of the same step, recorded with its dtype; the
  shapes carrying the most FLOPs are timed as a plain `torch.mm` in bfloat16 and float32 in the same
  process (best of several calls): the peak this machine reaches on the step's own GEMMs.
- Step time, two ways, each in its own subprocess, alternating A B B A ... (medians over the repeats):
  `framework`: `python src/train.py experiment=E trainer.max_steps=N+1 ~logger validate_before_training=false
  +trainer.limit_val_batches=0` (Lightning Trainer.fit with the project's callbacks, collator and logging)
  and its `cost.json` sec_per_step (CostMonitor: batch start to batch end, mean over the steps after the
  first); `bare`: this file's worker, a plain PyTorch loop over the same dataloader (same seed, same
  batches) doing the same forward and backward under the same autocast, gradient clipping
  (`trainer.gradient_clip_val`), AdamW and schedule, timed the same way (fetching the batch not timed).
  overhead = framework / bare - 1.
- Achieved FLOP/s = step FLOPs / the bare loop's median step time; `% of peak` divides that by the best
  bf16 and float32 torch.mm rate measured above.
- `--baseline OVERRIDE ...`: a third kind of run, `baseline`, is `framework` with these overrides added,
  alternated with the other two (A B C C B A ...): the speed-up of the default against it in one command,
  e.g. `--baseline lora.dropout=0` (what the LoRA dropout costs).

`--profile K` runs torch.profiler over K bare steps (after a warm-up step) and prints the top ops by self CPU
time, plus the padding share of each input group of the batch: where the step's time goes.
On a CPU shared with other jobs the timings mostly measure the other jobs: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("text_only", "image_text")
KINDS = ("framework", "bare")
# What a timing run does not need: the logger, validation before and during training (the task's recipe).
FRAMEWORK_OVERRIDES = ("~logger", "validate_before_training=false", "+trainer.limit_val_batches=0")
_MM_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}


# ---- building the step from the project's own config and objects ----
def compose_config(experiment: str, overrides: list[str], output_dir: str | Path):
    """The config `python src/train.py experiment=<experiment> <overrides>` would run, output in `output_dir`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from mmembed.hardware import register_resolvers

    os.environ.setdefault("MMEMBED_ROOT", str(REPO))  # as src/train.py does: configs find the data from it
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@dataclass
class Step:
    """What one training step needs, built as run_training builds it."""

    embedder: torch.nn.Module
    objective: object
    datamodule: object
    precision: str
    optim: dict
    clip: float | None
    seed: int
    batch_size: int = 0
    extra: dict = field(default_factory=dict)

    def autocast(self):
        # Lightning's bf16-mixed on CPU is this autocast around training_step; backward runs outside it.
        if str(self.precision).startswith("bf16"):
            return torch.autocast("cpu", dtype=torch.bfloat16)
        if str(self.precision) not in ("32-true", "32"):
            raise SystemExit(f"trainer.precision={self.precision}: this benchmark knows bf16-mixed and 32-true")
        return contextlib.nullcontext()

    def train_modes(self) -> None:
        # As EmbeddingLitModule.on_train_epoch_start: adapters in train mode, frozen vision modules in eval.
        from mmembed.models.backbones import vision_modules

        self.embedder.train()
        for module in vision_modules(self.embedder.model).values():
            module.eval()

    def loss(self, batch: dict, global_step: int = 0) -> torch.Tensor:
        from mmembed.objectives.base import StepContext

        with self.autocast():
            return self.objective(self.embedder, batch["features"], StepContext(global_step=global_step)).loss

    def batches(self):
        """The training dataloader's batches, in the order Lightning's fit would see them (same seed)."""
        import lightning as L

        L.seed_everything(self.seed, workers=True)
        self.datamodule.setup("fit")
        return iter(self.datamodule.train_dataloader())


def build_step(cfg) -> Step:
    """Objective, featurizer, DataModule and trainable embedder, in run_training's order and with its calls."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmembed.models.factory import build_embedder, build_featurizer
    from mmembed.run.config import lora_spec, model_spec
    from mmembed.run.training import build_datamodule

    objective = instantiate(cfg.objective, _convert_="all")
    spec = model_spec(cfg)
    featurizer = build_featurizer(spec)
    datamodule = build_datamodule(cfg.data, featurizer, objective)
    datamodule.check_data()
    prepare = getattr(objective, "prepare", None)
    if callable(prepare):
        prepare(datamodule)
    L.seed_everything(cfg.seed, workers=True)
    embedder = build_embedder(spec, featurizer, trainable=True, lora=lora_spec(cfg),
                              train_projector=bool(cfg.get("train_projector")))
    return Step(embedder=embedder, objective=objective, datamodule=datamodule, precision=str(cfg.trainer.precision),
                optim=OmegaConf.to_container(cfg.optim, resolve=True), clip=cfg.trainer.get("gradient_clip_val"),
                seed=int(cfg.seed), batch_size=int(cfg.data.batch_size))


# ---- counting ----
class GemmShapes(TorchDispatchMode):
    """Every 2-D matmul (aten.mm, aten.addmm) seen: (m, k, n, dtype) -> [calls, FLOPs]."""

    def __init__(self):
        super().__init__()
        self.shapes: dict[tuple, list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _MM_OPS:
            a, b = (args[0], args[1]) if func is torch.ops.aten.mm.default else (args[1], args[2])
            (m, k), n = a.shape, b.shape[1]
            entry = self.shapes.setdefault((int(m), int(k), int(n), str(a.dtype).replace("torch.", "")), [0, 0])
            entry[0] += 1
            entry[1] += 2 * m * k * n
        return func(*args, **(kwargs or {}))


@dataclass
class FlopCount:
    total: int
    by_op: dict[str, int]
    by_module: dict[str, int]
    gemms: list[dict]  # biggest first: m, k, n, dtype, calls, flops

    def top_gemms(self, n: int) -> list[dict]:
        return self.gemms[:n]


def count_flops(fn, module_depth: int = 3) -> FlopCount:
    """FLOPs of everything `fn()` runs (FlopCounterMode), by op and by module, and its 2-D GEMM shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    counter, shapes = FlopCounterMode(display=False, depth=module_depth), GemmShapes()
    with counter, shapes:
        fn()
    counts = counter.get_flop_counts()
    by_op = {str(op).replace("aten.", ""): int(v) for op, v in counts.get("Global", {}).items()}
    by_module = {name: int(sum(ops.values())) for name, ops in counts.items()
                 if name != "Global" and name.count(".") < module_depth}
    gemms = sorted(({"m": m, "k": k, "n": n, "dtype": dt, "calls": c, "flops": f}
                    for (m, k, n, dt), (c, f) in shapes.shapes.items()), key=lambda g: -g["flops"])
    return FlopCount(int(counter.get_total_flops()), by_op, by_module, gemms)


def step_flops(step: Step, batch: dict) -> FlopCount:
    """FLOPs of one training step's forward + backward on `batch` (gradients cleared afterwards)."""
    step.train_modes()

    def forward_backward():
        step.loss(batch).backward()

    result = count_flops(forward_backward)
    step.embedder.zero_grad(set_to_none=True)
    return result


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, calls: int = 5, rounds: int = 3) -> float:
    """FLOP/s of a plain torch.mm [m, k] x [k, n] in `dtype`: the best of `rounds` rounds of `calls` calls."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)  # warm-up: the kernel choice and the output allocation
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / calls)
    return 2 * m * k * n / best


def matmul_peaks(gemms: list[dict], calls: int = 5) -> list[dict]:
    """The bf16 and float32 torch.mm rate of each of `gemms` (dicts with m, k, n)."""
    return [{**g, "bf16_flops_per_s": matmul_rate(g["m"], g["k"], g["n"], torch.bfloat16, calls),
             "fp32_flops_per_s": matmul_rate(g["m"], g["k"], g["n"], torch.float32, calls)} for g in gemms]


def padding_shares(step: Step, batch: dict) -> list[dict]:
    """For each input group the objective embeds: its shape and the share of its positions that are padding
    (after mmembed.models.embedder.trim_padding's removal of all-padding columns)."""
    from mmembed.models.embedder import trim_padding

    groups = step.objective.groups(batch["features"]) if hasattr(step.objective, "groups") else []
    rows = []
    for i, group in enumerate(groups):
        mask = trim_padding(dict(group)).get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            rows.append({"group": i, "shape": list(mask.shape), "padding_share": 1 - float(mask.float().mean())})
    return rows


# ---- the bare loop (a worker subprocess) ----
def bare_loop(step: Step, steps: int, profiler=None) -> list[float]:
    """`steps` optimizer steps of plain PyTorch on the training dataloader's batches; seconds per step,
    timed as CostMonitor times Lightning's (batch in hand -> optimizer step and zero_grad done)."""
    from transformers import get_scheduler

    params = [p for p in step.embedder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=step.optim["lr"], weight_decay=step.optim.get("weight_decay", 0.0),
                            betas=tuple(step.optim.get("betas", (0.9, 0.999))))
    # EmbeddingLitModule.configure_optimizers' schedule, over this run's steps (max_steps is the trainer's total)
    schedule = step.optim.get("schedule", "linear")
    warmup = int(step.optim.get("warmup_steps", 0) or round(step.optim.get("warmup_ratio", 0.0) * steps))
    scheduler = get_scheduler({"constant": "constant_with_warmup"}.get(schedule, schedule), opt,
                              num_warmup_steps=warmup, num_training_steps=steps)
    step.train_modes()
    batches, times = step.batches(), []
    for i in range(steps):
        batch = next(batches)
        started = time.perf_counter()
        loss = step.loss(batch, global_step=i)
        loss.backward()
        if step.clip:
            torch.nn.utils.clip_grad_norm_(params, float(step.clip))
        opt.step()
        scheduler.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        if profiler is not None:
            profiler.step()
    return times


def bare_worker(experiment: str, steps: int, out: Path, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="step_flops_bare_") as tmp:
        step = build_step(compose_config(experiment, overrides, tmp))
        times = bare_loop(step, steps)
    out.write_text(json.dumps({"step_times": times}))


def timed(times: list[float]) -> list[float]:
    """The steps after the first (allocator and kernel warm-up), as CostMonitor.summary takes them."""
    return times[1:] if len(times) > 1 else times


# ---- one timing run of each kind, in its own process ----
def framework_command(experiment: str, steps: int, run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "src" / "train.py"), f"experiment={experiment}", *FRAMEWORK_OVERRIDES,
            f"trainer.max_steps={steps + 1}", f"hydra.run.dir={run_dir}", *extra]


def bare_command(experiment: str, steps: int, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--bare-worker", str(out), "--experiments", experiment,
            "--steps", str(steps), "--", *extra]


def run_once(kind: str, experiment: str, steps: int, run_dir: Path, extra: list[str],
             baseline: list[str] | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    out = run_dir / "bare.json"
    if kind == "bare":
        cmd = bare_command(experiment, steps, out, extra)
    else:  # Trainer.fit; a baseline run with its overrides last
        cmd = framework_command(experiment, steps, run_dir, [*extra, *(baseline or [])] if kind == "baseline" else extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} run ({experiment}) failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    if kind in ("framework", "baseline"):
        cost = json.loads((run_dir / "cost.json").read_text())
        sec, n = cost["sec_per_step"], cost["steps"]
    else:
        times = json.loads(out.read_text())["step_times"]
        sec, n = statistics.mean(timed(times)), len(times)
    return {"kind": kind, "experiment": experiment, "sec_per_step": sec, "steps": n, "load_avg_1m": load}


def run_order(repeats: int, baseline: bool = False) -> list[str]:
    """A B B A A B ... (A B C C B A ... with a baseline): each kind runs first in half the rounds."""
    kinds = (*KINDS, "baseline") if baseline else KINDS
    order = []
    for r in range(repeats):
        order += list(kinds if r % 2 == 0 else reversed(kinds))
    return order


# ---- the in-process part: FLOPs, peaks, profile ----
def measure_flops(experiment: str, overrides: list[str], steps: int, top: int, profile: int, calls: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="step_flops_") as tmp:
        step = build_step(compose_config(experiment, overrides, tmp))
        batch = next(step.batches())
        flops = step_flops(step, batch)
        result = {"experiment": experiment, "precision": step.precision, "batch_size": step.batch_size,
                  "flops": flops.total, "flops_by_op": flops.by_op, "flops_by_module": flops.by_module,
                  "gemm_shapes": flops.gemms[:20], "padding": padding_shares(step, batch),
                  "peaks": matmul_peaks(flops.top_gemms(top), calls)}
        if profile:
            result["profile"] = profile_table(step, profile)
        del step, batch
        gc.collect()
    return result


def profile_table(step: Step, steps: int, rows: int = 20) -> str:
    """torch.profiler over `steps` bare steps after one warm-up step: the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile, schedule

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                 schedule=schedule(wait=0, warmup=1, active=steps, repeat=1)) as prof:
        bare_loop(step, steps + 1, profiler=prof)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    lines = [f"top ops by self CPU time over {steps} steps (total self CPU {total / 1e6:.2f} s):",
             "| op | self CPU s | share | calls |", "|---|---|---|---|"]
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows]:
        lines.append(f"| {e.key} | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / total:.1%} | {e.count} |")
    by_shape = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::mm", "aten::addmm",
                       "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                       "aten::_scaled_dot_product_flash_attention_for_cpu_backward")),
                      key=lambda e: -e.self_cpu_time_total)[:rows]
    lines += ["", "matmul / attention ops by input shapes:", "| op | shapes | self CPU s | share | calls |",
              "|---|---|---|---|---|"]
    for e in by_shape:
        lines.append(f"| {e.key} | {e.input_shapes} | {e.self_cpu_time_total / 1e6:.3f} | "
                     f"{e.self_cpu_time_total / total:.1%} | {e.count} |")
    return "\n".join(lines)


# ---- reporting ----
def summarize(flop_result: dict, runs: list[dict]) -> dict:
    med = {k: statistics.median(r["sec_per_step"] for r in runs if r["kind"] == k) for k in KINDS}
    bf16 = max(p["bf16_flops_per_s"] for p in flop_result["peaks"])
    fp32 = max(p["fp32_flops_per_s"] for p in flop_result["peaks"])
    achieved = flop_result["flops"] / med["bare"]
    baseline = [r["sec_per_step"] for r in runs if r["kind"] == "baseline"]
    extra = ({"baseline_sec_per_step": statistics.median(baseline),
              "speedup_vs_baseline": statistics.median(baseline) / med["framework"]} if baseline else {})
    return {**extra, "framework_sec_per_step": med["framework"], "bare_sec_per_step": med["bare"],
            "overhead": med["framework"] / med["bare"] - 1, "achieved_flops_per_s": achieved,
            "achieved_flops_per_s_framework": flop_result["flops"] / med["framework"],
            "peak_bf16_flops_per_s": bf16, "peak_fp32_flops_per_s": fp32,
            "share_of_bf16_peak": achieved / bf16, "share_of_fp32_peak": achieved / fp32}


def table(results: dict[str, dict], baseline: list[str] | None = None) -> str:
    names = list(results)
    compared = [] if not baseline else [
        (f"s/step, Trainer.fit with {' '.join(baseline)} (median)",
         lambda r: f"{r['summary']['baseline_sec_per_step']:.3f}"),
        ("speed-up of the default over that", lambda r: f"{r['summary']['speedup_vs_baseline']:.3f}x")]
    rows = [
        ("precision", lambda r: r["flops"]["precision"]),
        ("batch size", lambda r: str(r["flops"]["batch_size"])),
        ("FLOPs per step (fwd+bwd)", lambda r: f"{r['flops']['flops'] / 1e9:.1f} G"),
        ("s/step, bare PyTorch (median)", lambda r: f"{r['summary']['bare_sec_per_step']:.3f}"),
        ("s/step, Lightning Trainer.fit (median)", lambda r: f"{r['summary']['framework_sec_per_step']:.3f}"),
        ("framework overhead", lambda r: f"{r['summary']['overhead']:+.1%}"),
        *compared,
        ("achieved FLOP/s (bare)", lambda r: f"{r['summary']['achieved_flops_per_s'] / 1e9:.1f} G"),
        ("achieved FLOP/s (framework)", lambda r: f"{r['summary']['achieved_flops_per_s_framework'] / 1e9:.1f} G"),
        ("torch.mm peak, bf16 (step's GEMMs)", lambda r: f"{r['summary']['peak_bf16_flops_per_s'] / 1e9:.1f} G"),
        ("torch.mm peak, float32 (step's GEMMs)", lambda r: f"{r['summary']['peak_fp32_flops_per_s'] / 1e9:.1f} G"),
        ("achieved / bf16 peak", lambda r: f"{r['summary']['share_of_bf16_peak']:.1%}"),
        ("achieved / float32 peak", lambda r: f"{r['summary']['share_of_fp32_peak']:.1%}"),
    ]
    return markdown([("", *names), *[(label, *(fn(results[n]) for n in names)) for label, fn in rows]])


def gemm_table(peaks: list[dict], total: int) -> str:
    header = ("GEMM [m,k]x[k,n]", "dtype", "calls", "share of step FLOPs", "mm bf16 GFLOP/s", "mm fp32 GFLOP/s")
    rows = [(f"[{p['m']},{p['k']}]x[{p['k']},{p['n']}]", p["dtype"], str(p["calls"]), f"{p['flops'] / total:.1%}",
             f"{p['bf16_flops_per_s'] / 1e9:.1f}", f"{p['fp32_flops_per_s'] / 1e9:.1f}") for p in peaks]
    return markdown([header, *rows])


def markdown(rows: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(rows[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows[1:]])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated experiment= recipes")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one untimed warm-up step)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per kind (framework, bare), alternating")
    parser.add_argument("--top-gemms", type=int, default=3, help="how many of the step's biggest GEMM shapes to time")
    parser.add_argument("--mm-calls", type=int, default=5, help="torch.mm calls per timing round of a GEMM shape")
    parser.add_argument("--profile", type=int, default=0, help="torch.profiler over this many bare steps (0 = none)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--baseline", nargs="+", metavar="OVERRIDE",
                        help="also time Trainer.fit with these Hydra overrides added, alternated with the rest")
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)  # internal: one bare run, to this file
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    experiments = [e for e in args.experiments.split(",") if e]
    if args.bare_worker:
        bare_worker(experiments[0], args.steps + 1, args.bare_worker, args.overrides)
        return

    results = {}
    with tempfile.TemporaryDirectory(prefix="step_flops_runs_") as tmp:
        for experiment in experiments:
            print(f"{experiment}: counting FLOPs, timing the step's GEMMs ...", file=sys.stderr, flush=True)
            flop_result = measure_flops(experiment, args.overrides, args.steps, args.top_gemms, args.profile,
                                        args.mm_calls)
            runs, order = [], run_order(args.repeats, baseline=bool(args.baseline))
            for i, kind in enumerate(order):
                print(f"{experiment}: run {i + 1}/{len(order)}: {kind} ...", file=sys.stderr, flush=True)
                runs.append(run_once(kind, experiment, args.steps, Path(tmp, f"{experiment}_{i}"), args.overrides,
                                     args.baseline))
                print(f"  {runs[-1]['sec_per_step']:.3f} s/step, load {runs[-1]['load_avg_1m']:.1f}",
                      file=sys.stderr, flush=True)
            results[experiment] = {"flops": flop_result, "runs": runs, "summary": summarize(flop_result, runs)}
    loads = [r["load_avg_1m"] for res in results.values() for r in res["runs"]]
    print(f"timed steps={args.steps} repeats={args.repeats} cpus={os.cpu_count()} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} load average (1 min) before runs: {min(loads):.1f}-{max(loads):.1f}")
    print(table(results, args.baseline))
    for name, res in results.items():
        f = res["flops"]
        print(f"\n{name}: the biggest GEMMs of the step, timed alone")
        print(gemm_table(f["peaks"], f["flops"]))
        top_ops = sorted(f["flops_by_op"].items(), key=lambda kv: -kv[1])[:6]
        print("FLOPs by op: " + ", ".join(f"{op} {v / f['flops']:.1%}" for op, v in top_ops))
        print("padding per input group: " + ", ".join(
            f"group {p['group']} {p['shape']} {p['padding_share']:.1%}" for p in f["padding"]))
        if f.get("profile"):
            print(f"\n{name}: {f['profile']}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "baseline": args.baseline,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
