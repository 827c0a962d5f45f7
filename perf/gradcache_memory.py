"""Peak memory and time per step of a contrastive step with and without GradCache.

    python perf/gradcache_memory.py --model tiny                 # built-in small transformer
    python perf/gradcache_memory.py --model tiny --batch-sizes 16 64 --chunk-size 8 --device cuda
    python perf/gradcache_memory.py --model default --steps 1 --warmup 0 --plain-max-batch 64
    python perf/gradcache_memory.py --model default --batch-sizes 16 --steps 3 --warmup 1 --repeats 3  # time ratio

`--model default` is the real offline default embedder as training builds it: text-only SmolLlava
(SmolLM2-135M-Instruct), LoRA r=64 / alpha 16 / dropout 0.05 on the decoder's linear layers, E5-V
text prompt, inputs = SNLI triplets (anchor, positive, hard negative; raw text cut to 32 tokens)
from $MMEMBED_DATA/nli (default ../shared/data). `--plain-max-batch` skips the plain (no GradCache)
configuration above that batch size, where it would not fit in memory.

Each (batch size, mode) runs in its own subprocess so peak memory does not mix between
configurations: CPU peak is `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the process's peak resident
set, including the ~0.3-0.5 GB of the interpreter and torch; `setup` is the peak before the first
step, `delta` = peak - setup is what the steps added), CUDA peak is `torch.cuda.max_memory_allocated`.
Needs mmembed importable (`pip install -e .`, as `make setup` does).
A step is zero_grad + forward/backward of InfoNCE over [queries; positives; hard negatives] (3 groups
of `batch` inputs) + AdamW step; the first `--warmup` steps are not timed.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.losses import grad_cache_step, info_nce


@dataclass
class Bench:
    """What a model factory returns: the module (for its parameters), an encode function mapping a
    batch to [n, D] L2-normalised embeddings, and a function making a random batch of n inputs."""

    module: nn.Module
    encode: Callable
    make_batch: Callable[[int, torch.Generator], object]
    # Optional: n -> the 3 input groups (queries, positives, hard negatives) of n related rows.
    make_groups: Callable[[int, torch.Generator], list] | None = None

    def groups(self, n: int, gen: torch.Generator) -> list:
        return self.make_groups(n, gen) if self.make_groups else [self.make_batch(n, gen) for _ in range(3)]


class TinyTransformerEncoder(nn.Module):
    """Token embedding + 2-layer transformer encoder + mean pooling: activations grow with the batch."""

    def __init__(self, vocab: int = 1000, dim: int = 128, layers: int = 2, heads: int = 4, seq_len: int = 32):
        super().__init__()
        self.seq_len, self.vocab = seq_len, vocab
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(self.embed(ids)).mean(dim=1), dim=-1)


def build_tiny_encoder(device: torch.device) -> Bench:
    model = TinyTransformerEncoder().to(device).train()

    def make_batch(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, model.vocab, (n, model.seq_len), generator=gen).to(device)

    return Bench(model, model, make_batch)


def _nli_file() -> Path:
    root = Path(os.environ.get("MMEMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "nli" / "snli_dev_simcse_triplets.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: set MMEMBED_DATA to the folder holding nli/")
    return path


def build_default_encoder(device: torch.device) -> Bench:
    """The offline default embedder with fresh LoRA adapters (r=64), fed SNLI triplets."""
    from mmembed.data.text_pairs import ANCHOR, HARD_NEGATIVE, POSITIVE, load_text_pairs
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.lora import apply_lora
    from mmembed.models.prompts import truncate_to_tokens

    rows = load_text_pairs([str(_nli_file())])
    backbone = load_backbone("default", text_only=True)
    backbone.model = apply_lora(backbone.model, r=64, alpha=16, dropout=0.05)
    embedder = MLLMEmbedder(backbone).to(device).train()
    tokenizer = backbone.tokenizer

    def featurize(texts: list[str]) -> dict:
        inputs = embedder.featurize_text(truncate_to_tokens(texts, tokenizer, 32))
        return {k: v.to(device) for k, v in inputs.items()}

    def make_groups(n: int, gen: torch.Generator) -> list:
        if n > len(rows):
            raise ValueError(f"batch {n} > {len(rows)} NLI rows")
        picked = rows.select(torch.randperm(len(rows), generator=gen)[:n].tolist())
        return [featurize(list(picked[col])) for col in (ANCHOR, POSITIVE, HARD_NEGATIVE)]

    def make_batch(n: int, gen: torch.Generator) -> dict:
        return make_groups(n, gen)[0]

    return Bench(embedder, lambda inputs: embedder(**inputs), make_batch, make_groups)


FACTORIES = {"tiny": build_tiny_encoder, "default": build_default_encoder}


def run_one(model: str, batch: int, mode: str, chunk_size: int, steps: int, warmup: int, device: str) -> dict:
    """Measure one configuration in this process (called in a fresh subprocess by `main`)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    bench = FACTORIES[model](dev)
    gen = torch.Generator().manual_seed(0)
    groups = bench.groups(batch, gen)
    opt = torch.optim.AdamW([p for p in bench.module.parameters() if p.requires_grad], lr=1e-4)
    cuda = dev.type == "cuda"
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if mode == "plain":
            loss = info_nce(*(bench.encode(g) for g in groups))
            loss.backward()
        else:
            loss = grad_cache_step(bench.encode, groups, info_nce, chunk_size)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "batch": batch,
        "mode": mode,
        "loss": loss.item(),
        "sec_per_step": sum(times) / len(times),
        "peak_rss_mb": peak_rss,
        "setup_rss_mb": setup_rss,
        "delta_rss_mb": peak_rss - setup_rss,
        "cuda_peak_mb": (torch.cuda.max_memory_allocated() - cuda_base) / 2**20 if cuda else None,
    }


def measure(args, batch: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--batch-sizes", str(batch), "--mode", mode,
           "--chunk-size", str(args.chunk_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (batch, mode): medians over repeats of s/step and peak memory, and the median of
    the per-repeat time ratios gradcache / plain (each pair measured back to back, so load drift
    between repeats cancels in the ratio)."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        for mode in ("plain", "gradcache"):
            runs = [r for r in rows if r["batch"] == batch and r["mode"] == mode]
            if not runs:
                continue
            keys = ("sec_per_step", "peak_rss_mb", "delta_rss_mb", "cuda_peak_mb")
            row = {"batch": batch, "mode": mode, "repeats": len(runs)}
            row |= {k: None if runs[0][k] is None else statistics.median(r[k] for r in runs) for k in keys}
            if mode == "gradcache":
                pairs = [(p, g) for p in rows for g in runs
                         if p["batch"] == batch and p["mode"] == "plain" and p["repeat"] == g["repeat"]]
                ratios = [g["sec_per_step"] / p["sec_per_step"] for p, g in pairs]
                row["time_ratios"] = ratios
                row["time_ratio_median"] = statistics.median(ratios) if ratios else None
            out.append(row)
    return out


def print_table(summary: list[dict], chunk_size: int) -> None:
    mem = "cuda_peak_mb" if summary[0]["cuda_peak_mb"] is not None else "delta_rss_mb"
    print(f"\nmemory column: {mem} (MiB); GradCache chunk size {chunk_size}; medians over repeats")
    head = f"{'batch':>6} | {'plain MB':>9} {'gc MB':>9} {'mem gc/plain':>12} | {'plain s':>8} {'gc s':>8} {'time gc/plain':>13}"
    print(head + f" | {'peak RSS plain/gc (MB)':>22} | per-repeat time ratios")
    print("-" * len(head) + "-" * 50)
    for batch in sorted({r["batch"] for r in summary}):
        p = next((r for r in summary if r["batch"] == batch and r["mode"] == "plain"), None)
        g = next(r for r in summary if r["batch"] == batch and r["mode"] == "gradcache")
        if p is None:  # skipped (--plain-max-batch)
            print(f"{batch:>6} | {'skipped':>9} {g[mem]:>9.1f} {'-':>12} | {'skipped':>8} {g['sec_per_step']:>8.3f} "
                  f"{'-':>13} | {'-':>10} / {g['peak_rss_mb']:<9.0f} |")
            continue
        ratios = ", ".join(f"{x:.2f}" for x in g["time_ratios"])
        print(f"{batch:>6} | {p[mem]:>9.1f} {g[mem]:>9.1f} {g[mem] / max(p[mem], 1e-9):>12.2f} | "
              f"{p['sec_per_step']:>8.3f} {g['sec_per_step']:>8.3f} {g['time_ratio_median']:>13.2f} | "
              f"{p['peak_rss_mb']:>10.0f} / {g['peak_rss_mb']:<9.0f} | {ratios}")
    gc = sorted((r for r in summary if r["mode"] == "gradcache"), key=lambda r: r["batch"])
    plain = sorted((r for r in summary if r["mode"] == "plain"), key=lambda r: r["batch"])
    if plain and any(r["batch"] > plain[-1]["batch"] for r in gc):
        # Plain does not fit beyond its largest batch: compare time per sample against it instead.
        base = plain[-1]
        per_sample = base["sec_per_step"] / base["batch"]
        print(f"time per sample vs plain at batch {base['batch']} ({per_sample:.3f} s/sample): " + ", ".join(
            f"gc batch {r['batch']} x{r['sec_per_step'] / r['batch'] / per_sample:.2f}" for r in gc))
    if len(gc) > 1:
        lo, hi = gc[0], gc[-1]
        print(f"GradCache memory growth batch {lo['batch']} -> {hi['batch']}: {mem} x{hi[mem] / max(lo[mem], 1e-9):.2f}, "
              f"peak RSS x{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(FACTORIES), default="tiny")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure each (batch, mode) this many times, plain and GradCache alternating; "
                         "the table reports medians and the median of the back-to-back time ratios")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--plain-max-batch", type=int, default=None,
                    help="skip the plain (no GradCache) run for batch sizes above this (it would not fit)")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["plain", "gradcache"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        res = run_one(args.model, args.batch_sizes[0], args.mode, args.chunk_size, args.steps, args.warmup, args.device)
        print(json.dumps(res))
        return
    if args.model == "default":
        from mmembed.models.smol_llava.assembly import ensure_default_model

        _nli_file(), ensure_default_model()  # fail fast (and prepare the model once), before spawning workers
    rows = []
    for batch in args.batch_sizes:
        for repeat in range(args.repeats):
            for mode in ("plain", "gradcache"):
                if mode == "plain" and args.plain_max_batch is not None and batch > args.plain_max_batch:
                    if repeat == 0:
                        print(f"batch {batch:>4}     plain: skipped (--plain-max-batch {args.plain_max_batch})", flush=True)
                    continue
                rows.append(measure(args, batch, mode) | {"repeat": repeat})
                r = rows[-1]
                print(f"batch {batch:>4} {mode:>9} (repeat {repeat + 1}/{args.repeats}): {r['sec_per_step']:.3f} s/step, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['delta_rss_mb']:.0f} over setup)"
                      + (f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if r["cuda_peak_mb"] else ""), flush=True)
                if args.json:  # keep what is measured so far: a long run stopped midway loses nothing
                    args.json.write_text(json.dumps({"runs": rows}, indent=2))
    summary = summarise(rows)
    print_table(summary, args.chunk_size)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
