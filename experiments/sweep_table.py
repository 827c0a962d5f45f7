"""One markdown table (and a bar plot) from any Hydra multirun folder of `src/train.py` jobs.

    python src/train.py -m hparams_search=unime_tau experiment=unime_stage1 hydra.sweep.dir=logs/tau
    python experiments/sweep_table.py logs/tau [--metrics val/sts_spearman eval/stsb/spearman] \
        [--out experiments/results/unime_tau]

Rows are jobs, labelled by the parameters the sweep varies (`hydra.sweeper.params` of the job's
`.hydra/hydra.yaml`); columns are the chosen metrics from the job's `train_summary.json` (validation
metrics at the end of training, then any post-training evaluation), plus the s/step and steps the
CostMonitor recorded. A job that did not finish (no train_summary.json) is listed as unfinished
rather than silently dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

DEFAULT_METRICS = ["val/sts_spearman", "train/loss", "train/teacher_corr"]


def swept_keys(job: Path) -> list[str]:
    hydra_cfg = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())
    return list(((hydra_cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {})


def job_overrides(job: Path) -> dict[str, str]:
    pairs = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(str(p).split("=", 1) for p in pairs if "=" in str(p))


def read_sweep(sweep: Path) -> tuple[list[str], list[dict]]:
    """(swept parameter names, one record per job folder: params, metrics, cost, finished)."""
    jobs, keys = [], []
    for job in sorted((p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()),
                      key=lambda p: int(p.name) if p.name.isdigit() else p.name):
        keys = keys or swept_keys(job)
        overrides = job_overrides(job)
        summary_file = job / "train_summary.json"
        record = {"job": job.name, "params": {k: overrides.get(k, "") for k in keys}, "finished": summary_file.is_file(),
                  "metrics": {}, "cost": {}}
        if record["finished"]:
            summary = json.loads(summary_file.read_text())
            record["metrics"] = {**summary.get("metrics", {}), **((summary.get("evaluation") or {}).get("metrics") or {})}
            record["cost"] = summary.get("cost") or {}
            record["cost"]["steps"] = summary.get("global_step")
        jobs.append(record)
    if not jobs:
        raise SystemExit(f"no Hydra job folder (<n>/.hydra/overrides.yaml) under {sweep}")
    return keys, jobs


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def build_table(keys: list[str], jobs: list[dict], metrics: list[str]) -> str:
    header = ["job", *keys, *metrics, "s / step", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for j in jobs:
        if not j["finished"]:
            cells = [j["job"], *(j["params"][k] for k in keys), "unfinished", *["-"] * (len(metrics) + 1)]
        else:
            cells = [j["job"], *(j["params"][k] for k in keys), *(_cell(j["metrics"].get(m), "{:.4f}" if "loss" in m
                                                                        or "corr" in m else "{:.2f}") for m in metrics),
                     _cell(j["cost"].get("sec_per_step")), _cell(j["cost"].get("steps"), "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(keys: list[str], jobs: list[dict], metrics: list[str], path: Path) -> None:
    """One bar panel per metric, a bar per finished job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j["finished"]]
    labels = [", ".join(f"{k.split('.')[-1]}={j['params'][k]}" for k in keys) for j in done]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4, 1.3 * len(done)) * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [j["metrics"].get(metric) for j in done]
        ax.bar(range(len(done)), [v or 0.0 for v in values], color="tab:blue", alpha=0.75)
        for x, value in enumerate(values):
            ax.text(x, value or 0.0, "-" if value is None else f"{value:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(done)), labels, fontsize=8, rotation=20)
        ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the multirun folder (one numbered folder per job)")
    parser.add_argument("--metrics", nargs="*", default=DEFAULT_METRICS, help="metric keys of train_summary.json")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.png")
    parser.add_argument("--plot-metrics", nargs="*", help="the metrics <out>.png shows, one panel each (default: the first)")
    args = parser.parse_args(argv)
    keys, jobs = read_sweep(args.sweep)
    text = f"Sweep: `{args.sweep}` ({len(jobs)} jobs, swept: {', '.join(keys) or 'nothing'})\n\n"
    text += build_table(keys, jobs, args.metrics)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        plot(keys, jobs, args.plot_metrics or args.metrics[:1], args.out.with_suffix(".png"))
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
