"""Quality against embedding size: STS-B test Spearman and Flickr8k 1k text->image R@10 at truncated dimensions.

    python experiments/matryoshka_dims.py --adapter plain=logs/text_only/runs/<a>/adapters/last \\
        --adapter matryoshka=logs/text_only/runs/<b>/adapters/last --out experiments/results/matryoshka_dims

Each adapter (a `make train` run, and the same run with `objective=matryoshka`: same steps, seed and data) is
loaded once on the base it records; the STS-B test sentences, the Flickr8k official 1k test images and their
5,000 captions (`--captions-per-image 1`: the first caption of each, 1,000 queries) are embedded once at the full size, and every smaller size is the first d dimensions of those
vectors, L2-renormalised: exactly what `truncate_dim=d` gives (mmembed.inference.truncation; tested equal in
tests/inference/test_truncate_dim.py). Scores use the benchmarks' own scoring functions. Writes `<out>.md` (a
table, and each size's share of the full size's score) and `<out>.png` (both metrics against d).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DIMS = (576, 384, 256, 128, 64, 32)


def truncate(emb: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nn.functional.normalize(emb[:, :dim].float(), dim=-1)


def benchmarks(captions_per_image: int | None):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=flickr8k_1k",
                               f"++eval.benchmarks.flickr8k_1k_test.captions_per_image={captions_per_image or 'null'}"])
        sts = compose("eval", ["eval=sts"])
    return instantiate(sts.eval.benchmarks.stsb), instantiate(cfg.eval.benchmarks.flickr8k_1k_test)


def embed(adapter: str | None, batch_size: int, captions_per_image: int | None) -> dict:
    from PIL import Image

    from mmembed.inference.embedder import Embedder
    from mmembed.models.model_record import saved_model_record

    record = saved_model_record(adapter) or {}
    model = Embedder.from_pretrained(record.get("base", "default:label_words"), adapter=adapter)
    stsb, flickr = benchmarks(captions_per_image)
    pairs = stsb.check()
    subsets = pairs[0] if isinstance(pairs, tuple) else pairs
    bench = flickr.check()
    out = {"sts": [], "images": None, "captions": None, "caption_image": list(bench.caption_image)}
    for subset in subsets:
        s1 = model.encode(texts=subset.sentences1, batch_size=batch_size)
        s2 = model.encode(texts=subset.sentences2, batch_size=batch_size)
        out["sts"].append((s1, s2, torch.tensor(subset.scores, dtype=torch.float64)))
    out["images"] = model.encode(images=[Image.open(p).convert("RGB") for p in bench.images], batch_size=batch_size)
    out["captions"] = model.encode(texts=bench.captions, batch_size=batch_size)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic) * 100


def scores(vectors: dict, dim: int) -> dict:
    from mmembed.evaluation.benchmarks.retrieval import retrieval_scores

    sims, gold = [], []
    for s1, s2, g in vectors["sts"]:
        sims.append((truncate(s1, dim) * truncate(s2, dim)).sum(-1).double())
        gold.append(g)
    recall = retrieval_scores(truncate(vectors["images"], dim), truncate(vectors["captions"], dim), vectors["caption_image"])
    return {"stsb_test": spearman(torch.cat(sims), torch.cat(gold)), "t2i_R@10": recall["t2i_R@10"]}


def write(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["| adapter | d | STS-B test | share of d=576 | Flickr8k 1k t2i R@10 | share of d=576 |", "|---|---|---|---|---|---|"]
    for name, per_dim in results.items():
        full = per_dim[str(DIMS[0])]
        for d, s in per_dim.items():
            lines.append(f"| {name} | {d} | {s['stsb_test']:.2f} | {s['stsb_test'] / full['stsb_test']:.1%} | "
                         f"{s['t2i_R@10']:.2f} | {s['t2i_R@10'] / full['t2i_R@10']:.1%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, per_dim in results.items():
        dims = [int(d) for d in per_dim]
        axes[0].plot(dims, [per_dim[str(d)]["stsb_test"] for d in dims], marker="o", label=name)
        axes[1].plot(dims, [per_dim[str(d)]["t2i_R@10"] for d in dims], marker="o", label=name)
    for ax, title in zip(axes, ("STS-B test Spearman x 100", "Flickr8k 1k test t2i R@10")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding dimensions (truncate_dim)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", required=True, help="name=adapter folder (repeat)")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "matryoshka_dims")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captions-per-image", type=int, default=None,
                        help="Flickr8k: each image's first k captions as queries (default: all 5, the official protocol)")
    args = parser.parse_args(argv)
    results = {}
    for spec in args.adapter:
        name, _, folder = spec.partition("=")
        vectors = embed(folder, args.batch_size, args.captions_per_image)
        results[name] = {str(d): scores(vectors, d) for d in DIMS}
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(results, args.out)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
