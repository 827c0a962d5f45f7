"""One markdown table (and a bar plot) from any Hydra multirun folder of `src/train.py` jobs.

    python src/train.py -m ablation=unime_tau experiment=unime_stage1 hydra.sweep.dir=logs/tau
    python experiments/sweep_table.py logs/tau [--metrics val/sts_spearman eval/stsb/spearman] \
        [--out experiments/results/unime_tau]
    python experiments/sweep_table.py logs/beta_k --metrics mean:train/false_negative_fraction \
        eval/mini_mmeb/overall --pivot objective.beta objective.k

Rows are jobs, labelled by the parameters the sweep varies (`hydra.sweeper.params` of the job's
`.hydra/hydra.yaml`); columns are the chosen metrics from the job's `train_summary.json` (validation
metrics at the end of training, then any post-training evaluation), plus the s/step and steps the
CostMonitor recorded. A job that did not finish (no train_summary.json) is listed as unfinished
rather than silently dropped.

A metric written `mean:<tag>` is the mean over every logged step of that TensorBoard scalar (e.g. the
share of queries that had a false negative filtered, over the whole run), read from the job's
`tensorboard/` event files; the summary holds only the last step's value. `--pivot ROW COL` adds one
ROW x COL table per metric (a beta x k grid), the cells of jobs that differ in nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

DEFAULT_METRICS = ["val/sts_spearman", "train/loss", "train/teacher_corr"]
RUN_MEAN = "mean:"


def run_means(job: Path, tags: list[str]) -> dict[str, float]:
    """{`mean:<tag>`: the mean of the tag's per-step values} over the job's TensorBoard event files."""
    if not tags:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {tag: [] for tag in tags}
    for events in sorted((job / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every step
        acc.Reload()
        for tag in set(tags) & set(acc.Tags().get("scalars", [])):
            values[tag] += [e.value for e in acc.Scalars(tag)]
    return {RUN_MEAN + tag: sum(v) / len(v) for tag, v in values.items() if v}


def swept_keys(job: Path) -> list[str]:
    hydra_cfg = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())
    return list(((hydra_cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {})


def job_overrides(job: Path) -> dict[str, str]:
    pairs = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(str(p).split("=", 1) for p in pairs if "=" in str(p))


def read_sweep(sweep: Path, metrics: list[str] = ()) -> tuple[list[str], list[dict]]:
    """(swept parameter names, one record per job folder: params, metrics, cost, finished)."""
    mean_tags = [m[len(RUN_MEAN):] for m in metrics if m.startswith(RUN_MEAN)]
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
            record["metrics"] = {**summary.get("metrics", {}), **((summary.get("evaluation") or {}).get("metrics") or {}),
                                 **run_means(job, mean_tags)}
            record["cost"] = summary.get("cost") or {}
            record["cost"]["steps"] = summary.get("global_step")
        jobs.append(record)
    if not jobs:
        raise SystemExit(f"no Hydra job folder (<n>/.hydra/overrides.yaml) under {sweep}")
    return keys, jobs


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _metric_format(metric: str) -> str:
    return "{:.4f}" if any(word in metric for word in ("loss", "corr", "fraction")) else "{:.2f}"


def _sort_key(value: str) -> tuple:
    """Numbers by value (-0.1 before 0 before 0.2), then any non-numeric value by text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def build_pivots(keys: list[str], jobs: list[dict], metrics: list[str], row: str, col: str) -> str:
    """One `row` x `col` markdown table per metric over the finished jobs."""
    missing = [k for k in (row, col) if k not in keys]
    if missing:
        raise SystemExit(f"--pivot {row} {col}: {missing} not swept (swept: {keys})")
    others = [k for k in keys if k not in (row, col)]
    if others:
        raise SystemExit(f"--pivot {row} {col}: the sweep also varies {others}; a 2-D table would mix its values")
    done = [j for j in jobs if j["finished"]]
    rows = sorted({j["params"][row] for j in done}, key=_sort_key)
    cols = sorted({j["params"][col] for j in done}, key=_sort_key)
    cell = {(j["params"][row], j["params"][col]): j for j in done}
    text = ""
    for metric in metrics:
        lines = [f"{metric} ({row} down, {col} across):", "",
                 "| " + " | ".join([f"{row} \\ {col}", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
        for r in rows:
            values = [cell[(r, c)]["metrics"].get(metric) if (r, c) in cell else None for c in cols]
            lines.append("| " + " | ".join([r, *(_cell(v, _metric_format(metric)) for v in values)]) + " |")
        text += "\n".join(lines) + "\n\n"
    return text


def build_table(keys: list[str], jobs: list[dict], metrics: list[str]) -> str:
    header = ["job", *keys, *metrics, "s / step", "steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for j in jobs:
        if not j["finished"]:
            cells = [j["job"], *(j["params"][k] for k in keys), "unfinished", *["-"] * (len(metrics) + 1)]
        else:
            cells = [j["job"], *(j["params"][k] for k in keys), *(_cell(j["metrics"].get(m), _metric_format(m))
                                                                   for m in metrics),
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
    width = max(4, 1.3 * len(done))
    # side by side for a few jobs; one panel per row once a row of panels would be too wide to read
    stacked = len(done) > 6 and len(metrics) > 1
    rows, cols = (len(metrics), 1) if stacked else (1, len(metrics))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
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
    parser.add_argument("--pivot", nargs=2, metavar=("ROW", "COL"), help="also a ROW x COL table per metric")
    args = parser.parse_args(argv)
    keys, jobs = read_sweep(args.sweep, args.metrics)
    text = f"Sweep: `{args.sweep}` ({len(jobs)} jobs, swept: {', '.join(keys) or 'nothing'})\n\n"
    text += build_table(keys, jobs, args.metrics)
    if args.pivot:
        text += "\n" + build_pivots(keys, jobs, args.metrics, *args.pivot)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        plot(keys, jobs, args.plot_metrics or args.metrics[:1], args.out.with_suffix(".png"))
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
