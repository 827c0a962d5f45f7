"""Encoding throughput and memory: E5-V's reference recipe vs mmembed's `Embedder.encode`.

    python benchmarks/encode_throughput.py                        # default model, 256 STS-B texts, 128 images
    python benchmarks/encode_throughput.py --n-texts 0 --threads 0  # all STS-B test sentences, torch's threads

Same model (loaded by the same loader), same prompt strings, same token ids, same batch size, same
inputs: the distinct sentences of the STS-B test set (columns 6 and 7, file order, first --n-texts)
and the first --n-images images of the Flickr8k folder, given as file paths (both recipes decode them).

- reference: E5-V's recipe (kongds/E5-V): prompts rendered per batch in input order, the processor on
  the batch (left padding), `model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1, :]` on
  the full ForConditionalGeneration (LM head included), L2-normalised, under torch.no_grad.
- mmembed: `Embedder.from_pretrained(model).encode(texts=...)` / `encode(images=paths)`.

Each recipe runs in its own subprocess (so memory does not mix), one after the other; the parent
prints the table and the minimum cosine between the two recipes' embeddings of each input.
Timing: one untimed warm-up batch, then wall clock and process CPU time (all threads) of encoding
everything. On a machine shared with other jobs wall clock is noisy; CPU time is the steadier measure,
and `--threads 1` (the default) keeps OpenMP spin-waiting out of it. Memory: `peak RSS` is
`resource.getrusage(RUSAGE_SELF).ru_maxrss` of the subprocess (its lifetime peak resident set: Python,
torch, the model and encoding); `encode peak` is the peak RSS sampled every 2 ms while encoding,
and `encode delta` = encode peak - RSS just before encoding (what encoding added on top of the model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMEMBED_DATA", REPO.parent / "shared" / "data"))
GOALS = {"texts/s": 2.0, "images/s": 1.5, "peak RSS": 0.7, "min cosine": 0.9999}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Peak resident set size, sampled in a thread while a block runs."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def sts_sentences(path: Path, n: int) -> list[str]:
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            sentences += [cols[5], cols[6]]
    unique = list(dict.fromkeys(sentences))
    return unique[:n] if n else unique


def image_paths(folder: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(paths) < n:
        raise SystemExit(f"{folder} has {len(paths)} images, fewer than --n-images {n}")
    return paths[:n]


# ---------------------------------------------------------------------------------------------
# The two recipes (worker side)
# ---------------------------------------------------------------------------------------------
def reference_recipe(model_name: str):
    """E5-V's recipe; returns encode(texts=None, images=None, batch_size) -> numpy."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from mmembed.models.backbones import load_backbone
    from mmembed.models.prompts import PromptConfig, PromptRenderer

    backbone = load_backbone(model_name, padding_side="left")
    model, processor = backbone.model, backbone.processor
    renderer = PromptRenderer(PromptConfig(), backbone.tokenizer, backbone.image_token)

    def encode(texts=None, images=None, batch_size=32):
        items = texts if texts is not None else images
        out = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            if texts is not None:
                inputs = processor(
                    text=[renderer.render("text", t) for t in chunk],
                    return_tensors="pt", padding=True, add_special_tokens=False,
                )
            else:
                pil = [Image.open(p).convert("RGB") for p in chunk]
                inputs = processor(
                    text=[renderer.render("image")] * len(pil), images=pil,
                    return_tensors="pt", padding=True, add_special_tokens=False,
                )
            with torch.no_grad():
                hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1, :]
            out.append(F.normalize(hidden.float(), dim=-1))
        return torch.cat(out).numpy()

    return encode


def mmembed_recipe(model_name: str):
    from mmembed.inference import Embedder

    embedder = Embedder.from_pretrained(model_name)

    def encode(texts=None, images=None, batch_size=32):
        return embedder.encode(texts=texts, images=images, batch_size=batch_size, to_numpy=True, progress=False)

    return encode


def worker(args) -> None:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = json.loads(Path(args.workdir, "inputs.json").read_text())
    rss_imported = rss_bytes()
    encode = (reference_recipe if args.worker == "reference" else mmembed_recipe)(args.model)
    stats = {"threads": torch.get_num_threads(), "rss_imported": rss_imported, "rss_loaded": rss_bytes()}
    encode(texts=inputs["texts"][:2], batch_size=args.batch_size)  # warm-up, untimed
    encode(images=inputs["images"][:2], batch_size=args.batch_size)
    stats["rss_warm"] = rss_bytes()
    for modality in ("texts", "images"):
        items = inputs[modality]
        with PeakSampler() as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            vectors = encode(**{modality: items}, batch_size=args.batch_size)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        np.save(Path(args.workdir, f"{args.worker}_{modality}.npy"), vectors)
        stats[modality] = {"n": len(items), "wall_s": wall, "cpu_s": cpu, "peak": mem.peak, "start": mem.start}
    stats["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(args.workdir, f"{args.worker}.json").write_text(json.dumps(stats))


# ---------------------------------------------------------------------------------------------
# Parent: run both, compare, print
# ---------------------------------------------------------------------------------------------
def run_recipe(recipe: str, args, workdir: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", recipe, "--workdir", workdir, "--model", args.model,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"running {recipe} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(workdir, f"{recipe}.json").read_text())


def report(ref: dict, ours: dict, cos: dict) -> tuple[str, dict]:
    def rate(s, m, clock):
        return s[m]["n"] / s[m][clock]

    mib = 2**20
    rows, ratios = [], {}
    for m in ("texts", "images"):
        for clock, label in (("cpu_s", "CPU time"), ("wall_s", "wall")):
            r, o = rate(ref, m, clock), rate(ours, m, clock)
            rows.append((f"{m}/s ({label})", f"{r:.2f}", f"{o:.2f}", f"{o / r:.2f}x"))
            ratios[f"{m}/s ({label})"] = o / r
    peak_r, peak_o = ref["ru_maxrss"], ours["ru_maxrss"]
    rows.append(("peak RSS (ru_maxrss)", f"{peak_r / mib:.0f} MiB", f"{peak_o / mib:.0f} MiB", f"{peak_o / peak_r:.2f}x"))
    ratios["peak RSS"] = peak_o / peak_r
    rows.append(("RSS after warm-up", f"{ref['rss_warm'] / mib:.0f} MiB", f"{ours['rss_warm'] / mib:.0f} MiB", ""))
    for m in ("texts", "images"):
        dr, do = ref[m]["peak"] - ref[m]["start"], ours[m]["peak"] - ours[m]["start"]
        rows.append((f"encode delta, {m}", f"{dr / mib:.0f} MiB", f"{do / mib:.0f} MiB", f"{do / max(dr, 1):.2f}x"))
    for m in ("texts", "images"):
        rows.append((f"min cosine, {m}", "", f"{cos[m]:.6f}", ""))
    header = ("", "E5-V reference", "mmembed", "mmembed/ref")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines), ratios


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sts", type=Path, default=DATA / "sts/original/STSBenchmark/sts-test.csv")
    parser.add_argument("--images", type=Path, default=DATA / "flickr8k/images")
    parser.add_argument("--n-texts", type=int, default=256, help="first N distinct STS-B test sentences (0 = all)")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per recipe (0 = torch's default)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", choices=("reference", "mmembed"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    import numpy as np

    texts, images = sts_sentences(args.sts, args.n_texts), image_paths(args.images, args.n_images)
    with tempfile.TemporaryDirectory() as workdir:
        Path(workdir, "inputs.json").write_text(json.dumps({"texts": texts, "images": images}))
        stats = {recipe: run_recipe(recipe, args, workdir) for recipe in ("reference", "mmembed")}
        cos = {}
        for m in ("texts", "images"):
            a, b = (np.load(Path(workdir, f"{r}_{m}.npy")) for r in ("reference", "mmembed"))
            cos[m] = float((a * b).sum(axis=1).min())
    table, ratios = report(stats["reference"], stats["mmembed"], cos)
    print(f"model={args.model} texts={len(texts)} images={len(images)} batch_size={args.batch_size} "
          f"threads={stats['mmembed']['threads']}")
    print(table)
    checks = {
        "texts/s >= 2x (CPU time)": ratios["texts/s (CPU time)"] >= GOALS["texts/s"],
        "images/s >= 1.5x (CPU time)": ratios["images/s (CPU time)"] >= GOALS["images/s"],
        "peak RSS <= 0.7x": ratios["peak RSS"] <= GOALS["peak RSS"],
        "min cosine >= 0.9999": min(cos.values()) >= GOALS["min cosine"],
    }
    print("goals: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items()))
    if args.json:
        args.json.write_text(json.dumps({"stats": stats, "min_cosine": cos, "ratios": ratios, "goals": checks}, indent=2))


if __name__ == "__main__":
    main()
