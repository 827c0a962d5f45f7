"""Encoding throughput and memory: E5-V's reference recipe vs mmembed's `Embedder.encode`.

    python perf/encode_throughput.py                        # default model, 256 STS-B texts, 128 images
    python perf/encode_throughput.py --n-texts 0 --threads 0  # all STS-B test sentences, torch's threads

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMEMBED_DATA", REPO.parent / "shared" / "data"))
GOALS = {"texts/s": 2.0, "images/s": 1.5, "peak RSS": 0.7, "min cosine": 0.9999}
# The next targets vs the reference, for every mmembed recipe, and how close a bfloat16 recipe's vectors
# must stay to mmembed's float32 ones for bf16 to be a default.
TARGETS = {"texts/s": 3.0, "images/s": 2.0, "min cosine": 0.999}


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
def reference_recipe(model_name: str, dtype: str = "float32", device: str = "cpu"):
    """E5-V's recipe; returns encode(texts=None, images=None, batch_size) -> numpy."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from mmembed.models.backbones import load_backbone
    from mmembed.models.prompts import PromptConfig, PromptRenderer

    backbone = load_backbone(model_name, dtype=dtype, padding_side="left")
    model, processor = backbone.model.to(device).eval(), backbone.processor
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
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
            with torch.no_grad():
                hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1, :]
            out.append(F.normalize(hidden.float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    return encode


def mmembed_recipe(model_name: str, dtype: str = "float32", device: str = "cpu", prefix_min_cos: float | None = None,
                   vision_dtype: str | None = None):
    """`Embedder.encode`. prefix_min_cos: re-check the shared-prefix cache at this cosine where the
    default check (0.9999, see mmembed/inference/prefix.py) turned it off, as bf16 rounding does."""
    from mmembed.inference import Embedder
    from mmembed.inference.prefix import build_prefix_cache

    embedder = Embedder.from_pretrained(model_name, dtype=dtype, device=device, vision_dtype=vision_dtype)
    if prefix_min_cos is not None and embedder.prefix is None:
        embedder.prefix = build_prefix_cache(embedder.embedder, True, min_cos=prefix_min_cos)

    def encode(texts=None, images=None, batch_size=32):
        return embedder.encode(texts=texts, images=images, batch_size=batch_size, to_numpy=True, progress=False)

    return encode


# name -> (recipe, options): the E5-V reference and mmembed in float32, mmembed in bfloat16 as shipped,
# in bfloat16 with its prefix cache re-checked at cosine 0.999 (see mmembed_recipe), and bf16 with float32 vision.
RECIPES = {
    "reference": (reference_recipe, {}),
    "mmembed": (mmembed_recipe, {}),
    "mmembed-bf16": (mmembed_recipe, {"dtype": "bfloat16"}),
    "mmembed-bf16-prefix": (mmembed_recipe, {"dtype": "bfloat16", "prefix_min_cos": 0.999}),
    # the LLM in bfloat16, the vision tower and projector in float32 (their top-k picks keep float32's)
    "mmembed-bf16-vision32": (mmembed_recipe, {"dtype": "bfloat16", "vision_dtype": "float32"}),
}
DEFAULT_RECIPES = "reference,mmembed,mmembed-bf16"


def worker(args) -> None:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = json.loads(Path(args.workdir, "inputs.json").read_text())
    rss_imported = rss_bytes()
    recipe, options = RECIPES[args.worker]
    encode = recipe(args.model, **options)
    stats = {"threads": torch.get_num_threads(), "rss_imported": rss_imported, "rss_loaded": rss_bytes(),
             "load_avg_1m": os.getloadavg()[0]}
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
# Parent: run the recipes (alternating over repeats), compare, print
# ---------------------------------------------------------------------------------------------
def run_recipe(recipe: str, args, workdir: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", recipe, "--workdir", workdir, "--model", args.model,
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"running {recipe} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(Path(workdir, f"{recipe}.json").read_text())


def measures(stats: dict) -> dict[str, float]:
    """One run's numbers, by row label of the table."""
    out = {}
    for m in ("texts", "images"):
        for clock, label in (("cpu_s", "CPU time"), ("wall_s", "wall")):
            out[f"{m}/s ({label})"] = stats[m]["n"] / stats[m][clock]
    out["peak RSS (ru_maxrss)"] = stats["ru_maxrss"]
    out["RSS after warm-up"] = stats["rss_warm"]
    for m in ("texts", "images"):
        out[f"encode delta, {m}"] = stats[m]["peak"] - stats[m]["start"]
    return out


def report(med: dict[str, dict], cos: dict[str, dict]) -> tuple[str, dict]:
    """The table (one value column per recipe, each mmembed recipe also as a ratio to the reference;
    bf16 recipes also to mmembed float32) and those ratios."""
    mib = 2**20
    names = list(med)
    columns, ratios = [], {}
    for name in names:
        columns.append((name, name, None))
        if name != "reference" and "reference" in med:
            columns.append((f"{name}/ref", name, "reference"))
        if name.startswith("mmembed-") and "mmembed" in med:
            columns.append((f"{name}/mmembed", name, "mmembed"))
    rows = []
    for label in med[names[0]]:
        memory = "RSS" in label or "delta" in label
        row = [label]
        for _, name, base in columns:
            value = med[name][label]
            if base is None:
                row.append(f"{value / mib:.0f} MiB" if memory else f"{value:.2f}")
            elif label == "RSS after warm-up":
                row.append("")
            else:
                ratio = value / max(med[base][label], 1e-12)
                ratios.setdefault(f"{name}/{base}", {})[label] = ratio
                row.append(f"{ratio:.2f}x")
        rows.append(row)
    for m in ("texts", "images"):
        row = [f"min cosine, {m}"]
        for _, name, base in columns:
            # each mmembed recipe against float32: the reference's for mmembed, mmembed's for bf16
            row.append(f"{cos[name][m]:.6f}" if base is None and name in cos else "")
        rows.append(row)
    header = ["", *(c[0] for c in columns)]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines), ratios


def goals(ratios: dict, cos: dict) -> dict[str, bool]:
    """The float32 Embedder's goals (texts 2x, images 1.5x, peak RSS 0.7x, identical vectors), and the
    issue's targets for every mmembed recipe: texts 3x, images 2x; bf16 vectors within 0.999 of float32."""
    checks = {}
    if "mmembed/reference" in ratios:
        r = ratios["mmembed/reference"]
        checks.update({
            "mmembed texts/s >= 2x (CPU time)": r["texts/s (CPU time)"] >= GOALS["texts/s"],
            "mmembed images/s >= 1.5x (CPU time)": r["images/s (CPU time)"] >= GOALS["images/s"],
            "mmembed peak RSS <= 0.7x": r["peak RSS (ru_maxrss)"] <= GOALS["peak RSS"],
            "mmembed min cosine >= 0.9999": min(cos["mmembed"].values()) >= GOALS["min cosine"],
        })
    for key, r in ratios.items():
        name, base = key.split("/")
        if base != "reference":
            continue
        checks[f"{name} texts/s >= 3x (CPU time)"] = r["texts/s (CPU time)"] >= TARGETS["texts/s"]
        checks[f"{name} images/s >= 2x (CPU time)"] = r["images/s (CPU time)"] >= TARGETS["images/s"]
        if name != "mmembed" and name in cos:
            checks[f"{name} min cosine to float32 >= 0.999"] = min(cos[name].values()) >= TARGETS["min cosine"]
    return checks


def run_order(recipes: list[str], repeats: int) -> list[str]:
    """Recipes in order, then reversed, and so on: drift in a shared machine's load hits all alike."""
    return [name for r in range(repeats) for name in (recipes if r % 2 == 0 else recipes[::-1])]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sts", type=Path, default=DATA / "sts/original/STSBenchmark/sts-test.csv")
    parser.add_argument("--images", type=Path, default=DATA / "flickr8k/images")
    parser.add_argument("--n-texts", type=int, default=256, help="first N distinct STS-B test sentences (0 = all)")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per recipe (0 = torch's default)")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"comma-separated, of {', '.join(RECIPES)} (default {DEFAULT_RECIPES})")
    parser.add_argument("--repeats", type=int, default=1, help="runs per recipe, alternating; the table shows medians")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", choices=tuple(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown or not recipes:
        parser.error(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES)}")

    import numpy as np

    texts, images = sts_sentences(args.sts, args.n_texts), image_paths(args.images, args.n_images)
    runs: dict[str, list[dict]] = {name: [] for name in recipes}
    cos: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        Path(workdir, "inputs.json").write_text(json.dumps({"texts": texts, "images": images}))
        vectors = {}
        for name in run_order(recipes, args.repeats):
            runs[name].append(run_recipe(name, args, workdir))
            vectors.setdefault(name, {m: np.load(Path(workdir, f"{name}_{m}.npy")) for m in ("texts", "images")})
    for name in recipes:
        # the float32 vectors each recipe should reproduce: mmembed -> reference, bf16 -> mmembed float32
        base = "reference" if name == "mmembed" else "mmembed" if name.startswith("mmembed-") else None
        if base in vectors:
            cos[name] = {m: float((vectors[name][m] * vectors[base][m]).sum(axis=1).min()) for m in ("texts", "images")}
    med = {name: {k: statistics.median(measures(s)[k] for s in runs[name]) for k in measures(runs[name][0])}
           for name in recipes}
    table, ratios = report(med, cos)
    loads = [s["load_avg_1m"] for rs in runs.values() for s in rs]
    print(f"model={args.model} texts={len(texts)} images={len(images)} batch_size={args.batch_size} "
          f"threads={runs[recipes[0]][0]['threads']} repeats={args.repeats} "
          f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    print(table)
    checks = goals(ratios, cos)
    print("goals: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in checks.items()))
    if args.json:
        min_cosine = cos.get("mmembed", {})
        args.json.write_text(json.dumps({
            "stats": {name: rs[0] for name, rs in runs.items()}, "runs": runs, "medians": med,
            "min_cosine": min_cosine, "min_cosine_to_float32": cos, "ratios": ratios, "goals": checks,
        }, indent=2))


if __name__ == "__main__":
    main()
