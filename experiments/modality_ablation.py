"""Arms x seeds: one markdown table and one PNG from a sweep folder (text-only vs image-text, or any other arm).

    python src/train.py -m ablation=modality_ablation                # writes logs/modality_ablation/multiruns/<time>/
    python experiments/modality_ablation.py logs/modality_ablation/multiruns/<time> \
        [--base logs/eval/runs/<aligned base eval>/results.json] [--out experiments/results/modality_ablation]
    python src/train.py -m ablation=text_source                      # NLI vs caption pairs (data=...)
    python experiments/modality_ablation.py logs/text_source/multiruns/<time> --arm-key data \
        --out experiments/results/text_source

`--arm-key` names the override that tells the arms apart (default `experiment`); arms appear in sweep order.

Each job folder holds `.hydra/overrides.yaml` (which arm, which seed) and `train_summary.json` (cost
measurements, and the evaluation numbers of `evaluation=local_heldout`). The table gives, per
benchmark and arm, the mean and sample standard deviation over seeds plus each seed's value; the cost
table gives seconds per step, samples/s, peak memory, the vision tower's presence and the training
wall time, with the text-only / image-text ratio. The plot shows one panel per benchmark: a bar per
arm (mean), an error bar (min to max over seeds) and a dot per seed. `--base` adds the untrained
aligned base as a reference row / dashed line.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ARMS = ("text_only", "image_text")  # the modality ablation's arms (its default order)
# (metric key in the evaluation metrics, label)
BENCHMARKS = [
    ("eval/sts12/spearman", "STS12"),
    ("eval/stsb/spearman", "STS-B test"),
    ("eval/sickr/spearman", "SICK-R test"),
    ("eval/flickr8k_1k_test/t2i_R@1", "F8k-test t2i R@1"),
    ("eval/flickr8k_1k_test/t2i_R@5", "F8k-test t2i R@5"),
    ("eval/flickr8k_1k_test/t2i_R@10", "F8k-test t2i R@10"),
    ("eval/flickr8k_1k_test/i2t_R@1", "F8k-test i2t R@1"),
    ("eval/flickr8k_1k_test/i2t_R@5", "F8k-test i2t R@5"),
    ("eval/flickr8k_1k_test/i2t_R@10", "F8k-test i2t R@10"),
    ("eval/flickr30k_test_local/t2i_R@1", "F30k-test-local t2i R@1"),
    ("eval/flickr30k_test_local/t2i_R@10", "F30k-test-local t2i R@10"),
    ("eval/flickr30k_test_local/i2t_R@1", "F30k-test-local i2t R@1"),
    ("eval/flickr30k_test_local/i2t_R@10", "F30k-test-local i2t R@10"),
    ("eval/coco80_local/t2i_R@1", "COCO-80 t2i R@1"),
    ("eval/coco80_local/t2i_R@10", "COCO-80 t2i R@10"),
    ("eval/coco80_local/i2t_R@1", "COCO-80 i2t R@1"),
    ("eval/coco80_local/i2t_R@10", "COCO-80 i2t R@10"),
    ("eval/cirr_local/R@1", "CIRR-12 R@1"),
    ("eval/cirr_local/Rsubset@1", "CIRR-12 Rs@1"),
    ("eval/imagenet1k/acc@1", "IN-1k acc@1"),
    ("eval/imagenet1k/acc@5", "IN-1k acc@5"),
    ("gap/centroid_distance_after", "modality gap (centroid distance)"),
    ("gap/matched_cosine_after", "matched image-caption cosine"),
]
STS = ("eval/sts12/spearman", "eval/stsb/spearman", "eval/sickr/spearman")
COST = [
    ("sec_per_step", "s / step", "{:.2f}"),
    ("samples_per_sec", "samples / s", "{:.2f}"),
    ("peak_rss_during_training_mb", "peak RSS in training (MB)", "{:.0f}"),
    # Sweep jobs share one process (Hydra's basic launcher): the memory a step adds over the RSS at
    # train start is comparable between jobs; the absolute peak also holds what earlier jobs left behind.
    ("train_rss_added_mb", "RSS added by training (MB)", "{:.0f}"),
    ("steps", "steps", "{:.0f}"),
    ("train_wall_s", "run wall time: model load + training (s)", "{:.0f}"),
    ("vision_tower_in_memory", "vision tower in memory", "{}"),
]


def read_overrides(job: Path) -> dict[str, str]:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = [line.lstrip("- ").strip().strip("'\"") for line in lines if "=" in line]
    return dict(pair.split("=", 1) for pair in pairs)


def read_jobs(sweep: Path, arm_key: str = "experiment") -> list[dict]:
    """One record per finished job: arm (its `arm_key` override), seed, metrics (evaluation + STS average), cost."""
    jobs = []
    for summary_file in sorted(sweep.glob("*/train_summary.json")):
        job = summary_file.parent
        summary = json.loads(summary_file.read_text())
        overrides = read_overrides(job)
        metrics = dict((summary.get("evaluation") or {}).get("metrics") or {})
        if all(k in metrics for k in STS):
            metrics["sts_avg"] = sum(metrics[k] for k in STS) / len(STS)
        cost = dict(summary.get("cost") or {})
        cost["train_wall_s"] = summary.get("train_wall_s", summary.get("wall_time_s"))
        if "peak_rss_during_training_mb" in cost and "rss_at_train_start_mb" in cost:
            cost["train_rss_added_mb"] = cost["peak_rss_during_training_mb"] - cost["rss_at_train_start_mb"]
        jobs.append({"job": job.name, "arm": overrides.get(arm_key), "seed": overrides.get("seed"),
                     "metrics": metrics, "cost": cost})
    if not jobs:
        raise SystemExit(f"no finished job (*/train_summary.json) under {sweep}")
    if any(j["arm"] is None for j in jobs):
        raise SystemExit(f"a job of {sweep} has no `{arm_key}=` override: pass the sweep's arm key with --arm-key")
    jobs.sort(key=lambda j: int(j["job"]) if j["job"].isdigit() else j["job"])  # sweep order, 10 after 9
    return jobs


def arms_of(jobs: list[dict]) -> list[str]:
    """The arms in sweep order (the modality ablation's text_only, image_text first)."""
    found = list(dict.fromkeys(j["arm"] for j in jobs))
    return [a for a in ARMS if a in found] + [a for a in found if a not in ARMS]


def _values(jobs: list[dict], arm: str, key: str, section: str = "metrics") -> list[float]:
    return [j[section][key] for j in jobs if j["arm"] == arm and j[section].get(key) is not None]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def _measured_rows(jobs: list[dict], base: dict | None) -> list[tuple[str, str]]:
    """The benchmark rows (STS average after the STS sets) that some job or the base measured: a sweep
    whose suite leaves a benchmark out (eval=modality_ablation has STS-B as its one STS set) shows no empty row."""
    rows = BENCHMARKS[:3] + [("sts_avg", "STS average")] + BENCHMARKS[3:]
    return [(key, name) for key, name in rows
            if any(j["metrics"].get(key) is not None for j in jobs) or (base and base.get(key) is not None)]


def build_table(jobs: list[dict], base: dict | None = None) -> str:
    arms = arms_of(jobs)
    seeds = {a: [j["seed"] for j in jobs if j["arm"] == a] for a in arms}
    header = ["benchmark"] + (["base (no training)"] if base else []) + [
        f"{a} (mean ± sd, seeds {', '.join(seeds[a])})" for a in arms] + [f"{a} per seed" for a in arms]
    if len(arms) == 2:
        header.append(f"{arms[0]} - {arms[1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, name in _measured_rows(jobs, base):
        cells = [name]
        if base:
            cells.append(f"{base[key]:.2f}" if base.get(key) is not None else "-")
        cells += [_mean_sd(_values(jobs, a, key)) for a in arms]
        cells += [", ".join(f"{v:.2f}" for v in _values(jobs, a, key)) or "-" for a in arms]
        if len(arms) == 2:
            t, i = _values(jobs, arms[0], key), _values(jobs, arms[1], key)
            cells.append(f"{statistics.fmean(t) - statistics.fmean(i):+.2f}" if t and i else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_cost_table(jobs: list[dict]) -> str:
    arms = arms_of(jobs)
    header = ["cost (mean over seeds)"] + list(arms) + ([f"ratio {arms[0]} / {arms[1]}"] if len(arms) == 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, name, fmt in COST:
        per_arm = {a: _values(jobs, a, key, "cost") for a in arms}
        cells = [name]
        for a in arms:
            vals = per_arm[a]
            if not vals:
                cells.append("-")
            elif isinstance(vals[0], bool):
                cells.append(", ".join(sorted({str(v) for v in vals})))
            else:
                cells.append(fmt.format(statistics.fmean(vals)))
        if len(header) > len(arms) + 1:
            t, i = per_arm.get(arms[0]), per_arm.get(arms[1])
            numeric = t and i and not isinstance(t[0], bool)
            cells.append(f"{statistics.fmean(t) / statistics.fmean(i):.3f}" if numeric else "")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nMemory: Hydra's basic launcher runs the jobs one after another in one process, and the allocator "
            "keeps memory freed by earlier jobs, so later jobs reuse it: peak RSS and RSS added are comparable only "
            "between jobs run in their own process (see experiments/README.md for those).\n")
    return "\n".join(lines) + "\n" + note


def plot(jobs: list[dict], path: Path, base: dict | None = None, title: str = "Modality ablation") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms_of(jobs)
    rows = _measured_rows(jobs, base)
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(rows) + cols - 1) // cols)))
    colors = dict(zip(arms, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    for ax, (key, name) in zip(axes.flat, rows):
        for x, arm in enumerate(arms):
            vals = _values(jobs, arm, key)
            if not vals:
                continue
            mean = statistics.fmean(vals)
            ax.bar(x, mean, color=colors[arm], alpha=0.7, label=arm)
            ax.errorbar(x, mean, yerr=[[mean - min(vals)], [max(vals) - mean]], color="k", capsize=4)
            ax.scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
        if base and base.get(key) is not None:
            ax.axhline(base[key], color="0.4", ls="--", lw=1, label="base")
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=9)
    fig.suptitle(f"{title}: mean over seeds, min-max bars, one dot per seed", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def base_metrics(results_file: Path) -> dict:
    """An evaluation run's results.json as the flat `eval/<benchmark>/<metric>` keys of the table."""
    results = json.loads(results_file.read_text())
    out = {f"eval/{name}/{k}": v for name, entry in results["benchmarks"].items() for k, v in entry["metrics"].items()}
    if all(k in out for k in STS):
        out["sts_avg"] = sum(out[k] for k in STS) / len(STS)
    gap = results_file.parent / "modality_gap.json"
    if gap.is_file():
        out.update({k.replace("_before", "_after"): v for k, v in json.loads(gap.read_text()).items() if k.endswith("_before")})
    return out


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the multirun folder (holding one folder per job)")
    parser.add_argument("--base", type=Path, help="results.json of the untrained base, as a reference")
    parser.add_argument("--arm-key", default="experiment", help="the override that tells the arms apart (data, ...)")
    parser.add_argument("--title", default=None, help="the plot's title (default: the sweep's arm key)")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.png")
    args = parser.parse_args(argv)
    jobs = read_jobs(args.sweep, args.arm_key)
    base = base_metrics(args.base) if args.base else None
    text = (f"Sweep: `{args.sweep}` ({len(jobs)} jobs)\n\n" + build_table(jobs, base) + "\n" + build_cost_table(jobs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        title = args.title or ("Modality ablation" if args.arm_key == "experiment" else f"Arms by {args.arm_key}")
        plot(jobs, args.out.with_suffix(".png"), base, title)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
