"""What the distillation teacher costs: cache build rate, and s/step with the cache vs running the teacher live.

One process, one model for every arm (default: the offline SmolLM2 default, text_only, unime_stage1's
LoRA), the first SNLI triplets of conf/data/nli.yaml. Arms, all on the same batches:
- text_only: E5-V's InfoNCE (experiment=text_only's objective);
- unime_stage1 (cache): relational distillation, teacher rows looked up from the safetensors cache;
- unime_stage1 (live teacher): the same loss, the teacher embedding the batch's texts in every step;
- distillation + infonce: objective=distillation_infonce (each part embeds the batch itself).
A step is: rows cut, objective features (the collator's work), forward, backward, AdamW step. The
median over `--steps` steps after one warm-up step is reported, and the collator's share of it.

The cache is built for a subset file of the batches' rows only (its key is the file's content), which
also measures the teacher's embedding rate on this machine. With `--pickle-files` it also reports the
pickled size of the training collator for those files (their cache must already exist).

    python perf/unime_teacher_cost.py --steps 4 --batch-size 16
    python perf/unime_teacher_cost.py --pickle-files $MMEMBED_DATA/nli/snli_*_simcse_triplets.csv \
        --pickle-teacher all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    os.environ.setdefault("MMEMBED_ROOT", str(REPO))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def subset_file(cfg, rows: int, folder: Path) -> Path:
    """The first `rows` triplets of the configured training files, as one CSV."""
    from mmembed.data.text_pairs import load_text_pairs

    ds = load_text_pairs(list(cfg.data.train_files)).select(range(rows))
    path = folder / "subset.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ds.column_names)
        writer.writeheader()
        writer.writerows(ds)
    return path


class LiveTeacher:
    """The distillation objective with the teacher run on every batch instead of a cache lookup."""

    def __init__(self, objective, encoder):
        self.objective, self.encoder = objective, encoder

    def features(self, featurizer, rows):
        texts = self.objective.student_texts(rows)
        teacher = self.encoder.encode(texts, batch_size=len(texts), convert_to_tensor=True, normalize_embeddings=True)
        return {"inputs": featurizer.featurize_text(texts), "teacher": teacher.float().cpu()}

    def __call__(self, embedder, features, ctx):
        return self.objective(embedder, features, ctx)


def time_steps(embedder, featurizer, objective, batches, max_text_tokens) -> dict:
    from mmembed.data.collate import TextPairRows
    from mmembed.objectives import StepContext

    prepare = TextPairRows(featurizer, max_text_tokens)
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    embedder.train()
    steps, collates = [], []
    for rows in batches:
        started = time.perf_counter()
        features = objective.features(featurizer, prepare(rows).rows)
        collated = time.perf_counter()
        out = objective(embedder, features, StepContext())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append(time.perf_counter() - started)
        collates.append(collated - started)
    steps, collates = steps[1:], collates[1:]  # the first step warms up
    return {"s_per_step": statistics.median(steps), "collate_s": statistics.median(collates), "loss": float(out.loss.detach())}


def tau_check(embedder, featurizer, objective, batches, max_text_tokens, taus=(0.01, 0.02, 0.05, 0.1)) -> None:
    """Per tau: how much of each teacher row's softmax falls off the diagonal (self-similarity is 1, so a low
    tau leaves little relational signal), and the untrained student's loss and self mass at the same tau."""
    from mmembed.data.collate import TextPairRows
    from mmembed.losses.distillation import relational_kl

    prepare, pairs = TextPairRows(featurizer, max_text_tokens), []
    embedder.eval()
    with torch.no_grad():
        for rows in batches:
            features = objective.features(featurizer, prepare(rows).rows)
            pairs.append((embedder(**features["inputs"]).float(), features["teacher"]))
    print("\n| tau | teacher mass off the diagonal | teacher candidates (perplexity off the diagonal) | "
          "student mass off the diagonal | initial loss |\n|---|---|---|---|---|")
    for tau in taus:
        stats = []
        for student, teacher in pairs:
            p, q = (torch.softmax(x @ x.T / tau, dim=1) for x in (teacher, student))
            off = ~torch.eye(p.shape[0], dtype=torch.bool)
            others = p[off].view(p.shape[0], -1)
            others = others / others.sum(1, keepdim=True)
            perplexity = torch.exp(-(others * others.clamp_min(1e-30).log()).sum(1)).mean()
            stats.append([1 - p.diagonal().mean(), perplexity, 1 - q.diagonal().mean(), relational_kl(student, teacher, tau)])
        mean = torch.tensor(stats).mean(0).tolist()
        print(f"| {tau} | {mean[0]:.3f} | {mean[1]:.1f} of {p.shape[0] - 1} | {mean[2]:.3f} | {mean[3]:.3f} |")


def pickled_collator_size(teacher: str, files: list[str], batch_size: int) -> str:
    from hydra.utils import instantiate

    from mmembed.models.factory import build_featurizer
    from mmembed.run.config import model_spec

    cfg = compose(["experiment=unime_stage1", f"objective.teacher={teacher}", "objective.build_cache=false",
                   f"data.train_files=[{','.join(files)}]", f"data.batch_size={batch_size}"])
    objective = instantiate(cfg.objective, _convert_="all")
    datamodule = instantiate(cfg.data, featurizer=build_featurizer(model_spec(cfg)), objective=objective)
    datamodule.check_data()
    objective.prepare(datamodule)
    rows = objective.teacher_rows
    blob, index = len(pickle.dumps(datamodule.train_collator())), len(pickle.dumps(rows.index))
    return (f"pickled collator: {blob / 2**20:.2f} MiB (sentence index {index / 2**20:.2f} MiB for {len(rows.index)} "
            f"sentences; the {tuple(rows.vectors.shape)} float32 matrix, {rows.vectors.nbytes / 2**20:.1f} MiB, stays out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher", default="all-mpnet-base-v2")
    parser.add_argument("--model", default="default")
    parser.add_argument("--arms", nargs="*", default=None, help="only the arms whose names contain one of these")
    parser.add_argument("--pickle-files", nargs="*", default=None, help="report the collator's pickled size for these files")
    parser.add_argument("--pickle-teacher", default=None, help="the teacher whose cache --pickle-files has (default: --teacher)")
    args = parser.parse_args()
    from hydra.utils import instantiate
    from sentence_transformers import SentenceTransformer

    from mmembed.models.factory import build_embedder, build_featurizer
    from mmembed.models.text_encoders import resolve_teacher
    from mmembed.run.config import lora_spec, model_spec

    torch.manual_seed(0)
    common = [f"model.name_or_path={args.model}", f"data.batch_size={args.batch_size}", f"objective.teacher={args.teacher}"]
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = compose(["experiment=unime_stage1", *common, f"objective.cache_dir={tmp}/cache"])
        featurizer = build_featurizer(model_spec(stage1))
        n_rows = args.batch_size * (args.steps + 1)
        subset = subset_file(stage1, n_rows, Path(tmp))
        from mmembed.data.text_pairs import load_text_pairs

        ds = load_text_pairs([str(subset)])
        batches = [list(ds.select(range(i, i + args.batch_size))) for i in range(0, n_rows, args.batch_size)]
        distillation = instantiate(stage1.objective, _convert_="all")
        started = time.perf_counter()
        distillation.prepare_files([subset], featurizer.tokenizer, stage1.data.max_text_tokens)
        build_s = time.perf_counter() - started
        n_sentences = len(distillation.teacher_rows.index)
        print(f"cache build, {args.teacher}: {n_sentences} sentences in {build_s:.1f} s "
              f"({n_sentences / build_s:.1f} sentences/s, teacher load included); load average {os.getloadavg()[0]:.1f}",
              flush=True)
        both = compose(["experiment=unime_stage1", "objective=distillation_infonce", *common[:2],
                        f"objective.parts.distillation.teacher={args.teacher}",
                        f"objective.parts.distillation.cache_dir={tmp}/cache"])
        combined = instantiate(both.objective, _convert_="all")
        combined.parts["distillation"].prepare_files([subset], featurizer.tokenizer, stage1.data.max_text_tokens)
        text_only = compose(["experiment=text_only", *common[:2]])
        encoder = SentenceTransformer(resolve_teacher(args.teacher), device="cpu")
        arms = {
            "text_only (InfoNCE)": (text_only, instantiate(text_only.objective, _convert_="all")),
            "unime_stage1 (cache)": (stage1, distillation),
            "unime_stage1 (live teacher)": (stage1, LiveTeacher(distillation, encoder)),
            "distillation + infonce (cache)": (both, combined),
        }
        # One model for every arm (unime_stage1's LoRA): the arms differ by their objective only.
        embedder = build_embedder(model_spec(stage1), featurizer, trainable=True, lora=lora_spec(stage1))
        tau_check(embedder, featurizer, distillation, batches, stage1.data.max_text_tokens)
        results = {}
        for name, (cfg, objective) in arms.items():
            if args.arms and not any(a in name for a in args.arms):
                continue
            results[name] = time_steps(embedder, featurizer, objective, batches, cfg.data.max_text_tokens)
            print(f"{name}: {results[name]}", flush=True)
        base = results.get("text_only (InfoNCE)", next(iter(results.values())))["s_per_step"]
        print(f"\n{args.model}, batch {args.batch_size} triplets ({3 * args.batch_size} texts), median of {args.steps} "
              f"steps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| arm | s/step | collate s/step | vs text_only |\n|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['s_per_step']:.2f} | {r['collate_s']:.3f} | {r['s_per_step'] / base:.2f}x |")
    if args.pickle_files:
        print("\n" + pickled_collator_size(args.pickle_teacher or args.teacher, args.pickle_files, args.batch_size))


if __name__ == "__main__":
    main()
