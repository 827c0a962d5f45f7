"""The three papers side by side: one row per recipe, trained on the same base, judged by the same suite.

    python experiments/three_papers.py                                  # every row, each recipe's own steps
    python experiments/three_papers.py --steps 40                       # an equal step budget for every recipe
    python experiments/three_papers.py --rows text_only image_text unime_stage1 unime_stage1_2 mmgem base   # + a row: the rest reused
    python experiments/three_papers.py --set unime_stage1:trainer.max_steps=150   # one run's own override
    python experiments/three_papers.py --table-only                     # re-tabulate finished runs
    python experiments/three_papers.py --seeds 1 2 3 -- model=smol_llava_label_words   # 3 seeds, mean +- sd

Rows (same base model, conf/model's default unless an extra override changes it):
    text_only       E5-V, LoRA on NLI text triplets only (the vision tower dropped)
    image_text      E5-V's image-text arm: the same LoRA and loss on image <-> caption pairs
    unime_stage1    UniME stage 1: textual knowledge distillation from the mpnet teacher
    unime_stage1_2  UniME stage 1, then stage 2 (hard-negative instruction tuning on the mini-MMEB train
                    files) started from stage 1's adapter; its wall time is both stages'
    mmgem           MM-GEM joint (embedding + captioning): the rows that caption are scored (CIDEr)
    mmgem_embedding_only, mmgem_captioning_only   (optional) MM-GEM with one objective (conf/arm/)
    mmgem_grid7     (optional) MM-GEM joint with the 7x7 map as the caption prefix (no PoolAggregator)
    unime_stage2    (optional) UniME stage 2 alone, from the base
    base            (optional) the untrained base, evaluated only

Each training run is `src/train.py experiment=<recipe> eval@evaluation=three_papers[_captions]` in
<out>/<run>; its console goes to <out>/<run>.console.log. A finished run (train_summary.json with its
evaluation) is reused when its command is unchanged, so an interrupted table resumes where it stopped;
a run whose command changed is refused (choose another --out or pass --force). The suite: STS12 / STS-B /
SICK-R, the Flickr8k 1k test both ways and the local mini-MMEB (built first when it is missing).
With `--seeds`, every run is repeated per seed in <out>/seed<N>/<run> (`seed=N` after the `--` overrides,
before a run's own `--set`), seed by seed, and each cell is the mean +- sample sd over the seeds whose row
finished (the number of seeds is a column); the base row trains nothing, so it is evaluated once, in <out>/base.
`--keep-from <earlier table>.json` keeps that table's finished rows (per seed) where their run folders are not
here (removed, or run elsewhere): they are not rerun, and the table says where they came from.
The base row's src/eval.py gets only the `--` overrides it has (`evaluation.X` as `eval.X`; training-only keys
such as val, trainer or seed left out). Writes <table>.md and <table>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STS = ("sts12", "stsb", "sickr")
RETRIEVAL = "flickr8k_1k_test"
IMAGE_ROW = ("model.vision_feature_cache=true",)  # the frozen tower's features computed once per image


@dataclass(frozen=True)
class Stage:
    run: str  # folder name under --out (shared by rows that share the stage)
    experiment: str | None  # None: evaluation only (src/eval.py)
    overrides: tuple[str, ...] = ()
    suite: str = "three_papers"
    after: str | None = None  # a stage whose adapter this one starts from


@dataclass(frozen=True)
class Row:
    label: str
    paper: str
    stages: tuple[Stage, ...]
    captions: bool = False


STAGE1 = Stage("unime_stage1", "unime_stage1")
ROWS = {
    "base": Row("untrained base", "-", (Stage("base", None),)),
    "text_only": Row("E5-V text_only", "E5-V", (Stage("text_only", "text_only"),)),
    "image_text": Row("E5-V image_text", "E5-V", (Stage("image_text", "image_text", IMAGE_ROW),)),
    "unime_stage1": Row("UniME stage 1", "UniME", (STAGE1,)),
    "unime_stage2": Row("UniME stage 2 only", "UniME", (Stage("unime_stage2", "unime_stage2", IMAGE_ROW),)),
    "unime_stage1_2": Row("UniME stage 1 + 2", "UniME",
                          (STAGE1, Stage("unime_stage1_2", "unime_stage2", IMAGE_ROW, after="unime_stage1"))),
    "mmgem": Row("MM-GEM joint", "MM-GEM",
                 (Stage("mmgem", "mmgem", IMAGE_ROW, suite="three_papers_captions"),), captions=True),
    # MM-GEM's claims as rows: each objective alone (conf/arm/), and the prefix without the PoolAggregator
    # (the tower's 7x7 map, 49 tokens, against the recipe's 3x3 = 9).
    "mmgem_embedding_only": Row("MM-GEM embedding only", "MM-GEM",
                                (Stage("mmgem_embedding_only", "mmgem", (*IMAGE_ROW, "arm=embedding_only")),)),
    "mmgem_captioning_only": Row("MM-GEM captioning only", "MM-GEM",
                                 (Stage("mmgem_captioning_only", "mmgem", (*IMAGE_ROW, "arm=captioning_only"),
                                        suite="three_papers_captions"),), captions=True),
    "mmgem_grid7": Row("MM-GEM joint, 7x7 prefix", "MM-GEM",
                       (Stage("mmgem_grid7", "mmgem", (*IMAGE_ROW, "model.extension.grid=7"),
                              suite="three_papers_captions"),), captions=True),
}
DEFAULT_ROWS = ["text_only", "image_text", "unime_stage1", "unime_stage1_2", "mmgem"]
COLUMNS = [  # (header, metric key or a derived name)
    ("STS avg", "sts_avg"), ("STS-B", "eval/stsb/spearman"),
    ("t2i R@1", f"eval/{RETRIEVAL}/t2i_R@1"), ("t2i R@10", f"eval/{RETRIEVAL}/t2i_R@10"),
    ("i2t R@1", f"eval/{RETRIEVAL}/i2t_R@1"), ("i2t R@10", f"eval/{RETRIEVAL}/i2t_R@10"),
    ("mini-MMEB overall", "eval/mini_mmeb/overall"), ("CIDEr", "eval/flickr8k_1k_captions/CIDEr"),
]

# The mini-MMEB breakdown, as MMEB reports it: per meta-task, in-distribution / out-of-distribution, overall.
MMEB_COLUMNS = [(h, f"eval/mini_mmeb/{key}") for h, key in (
    ("classification", "classification"), ("VQA", "vqa"), ("retrieval", "retrieval"), ("grounding", "grounding"),
    ("IND", "IND"), ("OOD", "OOD"), ("overall", "overall"))]


class TableError(Exception):
    """A user-facing problem (bad row name, a changed command in a reused folder): printed, exit 2."""


def eval_keys() -> set[str]:
    """The root keys and config groups src/eval.py's root config (conf/eval.yaml) has."""
    from omegaconf import OmegaConf

    root = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval.yaml"))
    groups = {next(iter(d)).split("@")[0] if isinstance(d, dict) else d for d in root.pop("defaults")}
    return (groups - {"_self_"}) | set(root)


def for_evaluation_only(overrides: list[str]) -> list[str]:
    """The overrides meant for every run, as src/eval.py takes them: the training suite's `evaluation.` keys
    become `eval.`; training-only keys (val, trainer, seed, ...) are left out, since src/eval.py has no such
    key and would refuse the whole command; the rest (model, prompt, ...) pass unchanged."""
    known, kept = eval_keys(), []
    for override in overrides:
        if override.startswith("evaluation."):
            override = "eval." + override.removeprefix("evaluation.")
        key = override.lstrip("+~").split("=")[0]
        if key.split(".")[0].split("@")[0] in known:
            kept.append(override)
    return kept


def stage_command(stage: Stage, out: Path, steps: int | None, mmeb_queries: int | None, extra: list[str],
                  per_run: dict[str, list[str]] | None = None) -> list[str]:
    """The stage's src/train.py (or, evaluation only, src/eval.py) command line; `extra` then the stage's own
    `per_run` overrides come last, so they win. An evaluation-only stage gets only the `extra` overrides
    src/eval.py has (for_evaluation_only)."""
    run_dir = out / stage.run
    args = [f"hydra.run.dir={run_dir}"]
    if stage.experiment is None:
        args += [f"eval={stage.suite}"]
    else:
        args += [f"experiment={stage.experiment}", f"eval@evaluation={stage.suite}", *stage.overrides]
        if steps is not None:
            args.append(f"trainer.max_steps={steps}")
        if stage.after:
            args.append(f"adapter={out / stage.after / 'adapters' / 'last'}")
    if mmeb_queries is not None:
        scope = "eval" if stage.experiment is None else "evaluation"
        args.append(f"{scope}.benchmarks.mini_mmeb.max_queries={mmeb_queries}")
    script = "eval.py" if stage.experiment is None else "train.py"
    if stage.experiment is None:
        extra = for_evaluation_only(extra)
    return [sys.executable, str(REPO / "src" / script), *args, *extra, *(per_run or {}).get(stage.run, [])]


def parse_per_run(pairs: list[str], runs: set[str]) -> dict[str, list[str]]:
    """`RUN:key=value` -> {RUN: [key=value, ...]} for runs this table has."""
    per_run: dict[str, list[str]] = {}
    for pair in pairs:
        run, sep, override = pair.partition(":")
        if not sep or "=" not in override:
            raise TableError(f"--set {pair!r}: expected RUN:key=value, e.g. unime_stage1:trainer.max_steps=100")
        if run not in runs:
            raise TableError(f"--set {pair!r}: no run {run!r} in this table; its runs are {sorted(runs)}")
        per_run.setdefault(run, []).append(override)
    return per_run


def stage_metrics(run_dir: Path, evaluation_only: bool) -> tuple[dict, dict] | None:
    """(metrics as eval/<benchmark>/<metric>, cost) of a finished stage, else None."""
    if evaluation_only:
        results = run_dir / "results.json"
        if not results.is_file():
            return None
        data = json.loads(results.read_text())
        metrics = {f"eval/{name}/{k}": v for name, b in data["benchmarks"].items()
                   for k, v in (b.get("metrics") or {}).items()}
        return metrics, {"wall_time_s": 0.0, "steps": 0}
    summary_file = run_dir / "train_summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    if "evaluation" not in summary:
        return None  # trained, but the evaluation did not finish
    cost = {"wall_time_s": summary.get("wall_time_s"), "steps": summary.get("global_step"),
            "sec_per_step": (summary.get("cost") or {}).get("sec_per_step")}
    return summary["evaluation"]["metrics"], cost


def shown(path: Path) -> str:
    """A path as results files show it: relative to the repository when inside it (no machine's own path)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def row_record(name: str, row: Row, out: Path) -> dict:
    """The row's metrics (its last stage's evaluation) and its training cost (every stage summed)."""
    finished = [stage_metrics(out / s.run, s.experiment is None) for s in row.stages]
    record = {"row": name, "label": row.label, "paper": row.paper, "runs": [shown(out / s.run) for s in row.stages],
              "finished": all(f is not None for f in finished), "metrics": {}, "cost": {}}
    if record["finished"]:
        metrics = dict(finished[-1][0])
        sts = [metrics.get(f"eval/{b}/spearman") for b in STS]
        metrics["sts_avg"] = sum(sts) / len(sts) if None not in sts else None
        record["metrics"] = metrics
        trained = [f[1] for f, s in zip(finished, row.stages) if s.experiment is not None]
        record["cost"] = {"wall_time_s": sum(c["wall_time_s"] or 0.0 for c in trained),
                          "steps": "+".join(str(c["steps"]) for c in trained) or "0"}
    return record


def evaluation_only(row: Row) -> bool:
    """No stage trains: the row is deterministic, so seeds would repeat the same evaluation."""
    return all(s.experiment is None for s in row.stages)


def load_kept(path: Path | None) -> dict[tuple[str, int | None], dict]:
    """An earlier table's finished records, {(row, seed or None): record}: they stand in for runs whose
    folders are not here (removed, or run on another machine), so a table can be finished elsewhere."""
    if path is None:
        return {}
    if not path.is_file():
        raise TableError(f"--keep-from {path}: no such file (an earlier table's .json)")
    kept = {}
    for record in json.loads(path.read_text()):
        for seed, one in (record.get("per_seed") or {None: record}).items():
            if one.get("finished"):
                kept[(record["row"], None if seed is None else int(seed))] = {**one, "kept_from": shown(path)}
    return kept


def seeded_record(name: str, row: Row, out: Path, seeds: list[int], kept: dict | None = None) -> dict:
    """The row over seeds: each metric's and the wall time's mean and sample sd over the seeds whose runs
    finished (<out>/seed<N>), with every seed's own record kept. An evaluation-only row ran once (<out>/<run>):
    its one record, with no seeds and no sd."""
    if evaluation_only(row):
        record = row_record(name, row, out)
        return {**(record if record["finished"] else (kept or {}).get((name, None), record)), "seeds": [], "sd": {}}
    per_seed = {seed: row_record(name, row, out / f"seed{seed}") for seed in seeds}
    for seed, one in per_seed.items():  # a run finished here wins over the earlier table's record
        if not one["finished"] and (name, seed) in (kept or {}):
            per_seed[seed] = kept[(name, seed)]
    done = {seed: r for seed, r in per_seed.items() if r["finished"]}
    record = {"row": name, "label": row.label, "paper": row.paper, "seeds": sorted(done),
              "runs": [run for r in per_seed.values() for run in r.get("runs", [])],
              "finished": bool(done), "metrics": {}, "sd": {}, "cost": {}, "per_seed": per_seed}
    if done:
        keys = sorted({k for r in done.values() for k, v in r["metrics"].items() if v is not None})
        for key in keys:
            values = [r["metrics"][key] for r in done.values() if r["metrics"].get(key) is not None]
            record["metrics"][key] = statistics.fmean(values)
            record["sd"][key] = statistics.stdev(values) if len(values) > 1 else None
        walls = [r["cost"]["wall_time_s"] for r in done.values()]
        record["cost"] = {"wall_time_s": statistics.fmean(walls),
                          "steps": "/".join(dict.fromkeys(r["cost"]["steps"] for r in done.values()))}
    return record


def _cell(value, fmt="{:.2f}", sd=None) -> str:
    if value is None:
        return "-"
    return fmt.format(value) + ("" if sd is None else f" ± {fmt.format(sd)}")


def build_mmeb_table(records: list[dict]) -> str:
    """mini-MMEB hit@1 per meta-task, IND / OOD and overall, one row per finished recipe."""
    header = ["recipe", *(h for h, _ in MMEB_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        if r["finished"]:
            cells = (_cell(r["metrics"].get(k), sd=r.get("sd", {}).get(k)) for _, k in MMEB_COLUMNS)
            lines.append("| " + " | ".join([r["label"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def build_table(records: list[dict]) -> str:
    seeded = any("seeds" in r for r in records)
    header = ["recipe", "paper", *(h for h, _ in COLUMNS), "train wall (min)", "steps", *(["seeds"] if seeded else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        seeds = [", ".join(map(str, r.get("seeds", []))) or "-"] if seeded else []
        if not r["finished"]:
            cells = [r["label"], r["paper"], "not finished", *["-"] * (len(COLUMNS) + 1), *seeds]
        else:
            wall = r["cost"]["wall_time_s"]
            cells = [r["label"], r["paper"], *(_cell(r["metrics"].get(key), sd=r.get("sd", {}).get(key))
                                                for _, key in COLUMNS),
                     _cell(wall / 60 if wall else None, "{:.1f}"), r["cost"]["steps"], *seeds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _run_stage(stage: Stage, command: list[str], out: Path, force: bool, position: str) -> bool:
    run_dir = out / stage.run
    record = run_dir / "three_papers_command.json"
    shown = command[1:]  # without the interpreter path: a venv moved elsewhere reuses its runs
    done = stage_metrics(run_dir, stage.experiment is None) is not None
    if done and not force:
        previous = json.loads(record.read_text()) if record.is_file() else None
        if previous != shown:
            raise TableError(f"{run_dir} holds a finished run of another command; pass --force to replace it, "
                             f"or choose another --out.\n  then: {previous}\n  now:  {shown}")
        print(f"{position} {stage.run}: finished before, reused ({run_dir})", flush=True)
        return True
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(shown, indent=1))
    log = out / f"{stage.run}.console.log"
    print(f"{position} {stage.run}: {'evaluating' if stage.experiment is None else 'training + evaluating'} "
          f"(console: {log})", flush=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        code = subprocess.call(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - started) / 60
    if code != 0 or stage_metrics(run_dir, stage.experiment is None) is None:
        tail = log.read_text(errors="replace")[-1500:]
        print(f"{position} {stage.run}: FAILED after {minutes:.1f} min (exit {code}); the end of {log}:\n{tail}",
              file=sys.stderr, flush=True)
        return False
    print(f"{position} {stage.run}: done in {minutes:.1f} min", flush=True)
    return True


def ensure_mini_mmeb(cache_dir: Path, data_root: Path) -> None:
    sys.path.insert(0, str(REPO / "src"))  # a checkout without `pip install -e .`
    from mmembed.prep.mini_mmeb.build import VERSION, build_mini_mmeb

    target = cache_dir / VERSION
    if not (target / "counts.json").is_file():
        print(f"building the mini-MMEB into {target} (once per machine)", flush=True)
        build_mini_mmeb(data_root, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Arguments after `--` go to every src/train.py / src/eval.py run.")
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help=f"of {list(ROWS)}")
    parser.add_argument("--steps", type=int, help="trainer.max_steps for every recipe (default: each recipe's own)")
    parser.add_argument("--mmeb-queries", type=int, help="each mini-MMEB dataset's first N queries (a timed subset)")
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "three_papers", help="the runs' folder")
    parser.add_argument("--table", type=Path, default=REPO / "experiments" / "results" / "three_papers",
                        help="writes <table>.md and <table>.json")
    parser.add_argument("--set", nargs="+", default=[], metavar="RUN:key=value",
                        help="an override for one run only, e.g. unime_stage1:trainer.max_steps=150")
    parser.add_argument("--seeds", nargs="+", type=int, help="repeat every run per seed (<out>/seed<N>); "
                        "cells become mean +- sd over seeds")
    parser.add_argument("--keep-from", type=Path, metavar="TABLE.json",
                        help="an earlier table's .json: its finished rows (per seed) are kept, not rerun, where "
                             "their run folders are not here")
    parser.add_argument("--force", action="store_true", help="rerun stages that finished before")
    parser.add_argument("--table-only", action="store_true", help="tabulate what is finished; train nothing")
    parser.add_argument("extra", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise TableError(f"unknown row(s) {unknown}; the rows are {list(ROWS)}")
    if args.steps is not None and args.steps < 1:
        raise TableError(f"--steps must be >= 1, got {args.steps}")
    out = args.out.resolve()
    rows = [(name, ROWS[name]) for name in dict.fromkeys(args.rows)]
    failed: set[str] = set()
    kept = load_kept(args.keep_from)
    if not args.table_only:
        env_cache = os.environ.get("MMEMBED_CACHE", str(Path.home() / ".cache" / "mmembed"))
        data_root = os.environ.get("MMEMBED_DATA", str(REPO.parent / "shared" / "data"))
        stages = list(dict.fromkeys(s for _, row in rows for s in row.stages))
        per_run = parse_per_run(args.set, {s.run for s in stages})  # a bad --set fails before any build
        ensure_mini_mmeb(Path(env_cache), Path(data_root))
        rounds = [(out, args.extra, "")] if not args.seeds else [
            (out / f"seed{seed}", [*args.extra, f"seed={seed}"], f"seed {seed} ") for seed in args.seeds]
        total = len(stages) * len(rounds)
        for r, (folder, extra, which) in enumerate(rounds):
            failed_here: set[str] = set()
            seed = args.seeds[r] if args.seeds else None
            needed = {s for name, row in rows if (name, None if evaluation_only(row) else seed) not in kept
                      for s in row.stages}
            for i, stage in enumerate(stages, 1):
                position = f"[{r * len(stages) + i}/{total}] {which}".rstrip()
                if stage not in needed and not stage_metrics(folder / stage.run, stage.experiment is None):
                    print(f"{position} {stage.run}: kept from {shown(args.keep_from)}", flush=True)
                    continue
                where, overrides = folder, extra
                if args.seeds and stage.experiment is None:  # deterministic: evaluated once, in <out>/<run>
                    if r > 0:
                        print(f"{position} {stage.run}: evaluation only, the same for every seed "
                              f"({out / stage.run})", flush=True)
                        continue
                    where, overrides = out, args.extra
                if stage.after in failed_here:
                    print(f"{position} {stage.run}: skipped, {stage.after} failed", file=sys.stderr, flush=True)
                    failed_here.add(stage.run)
                    continue
                where.mkdir(parents=True, exist_ok=True)
                command = stage_command(stage, where, args.steps, args.mmeb_queries, overrides, per_run)
                if not _run_stage(stage, command, where, args.force, position):
                    failed_here.add(stage.run)
            failed |= {f"{which}{run}".strip() for run in failed_here}
    if args.seeds:
        records = [seeded_record(name, row, out, args.seeds, kept) for name, row in rows]
    else:
        records = [row_record(name, row, out) for name, row in rows]
        records = [kept.get((r["row"], None), r) if not r["finished"] else r for r in records]
    text = (f"Runs: `{shown(out)}`; the suite: STS12 / STS-B / SICK-R (Spearman x100; STS avg = their mean), "
            f"Flickr8k 1k test (1,000 images x 5,000 captions) Recall, mini-MMEB hit@1 overall"
            f"{f' (first {args.mmeb_queries} queries per dataset)' if args.mmeb_queries else ''}, "
            f"CIDEr x100 of greedy captions of the same 1,000 images (recipes that caption)"
            f"{f'; mean ± sample sd over seeds {args.seeds} (the seeds column: those finished)' if args.seeds else ''}.\n\n")
    sources = sorted({one["kept_from"] for r in records for one in [r, *(r.get("per_seed") or {}).values()]
                      if "kept_from" in one})
    if sources:
        text += (f"Runs whose folders are not here are kept from {', '.join(f'`{x}`' for x in sources)} "
                 f"(their records there; the JSON marks each with kept_from).\n\n")
    text += build_table(records)
    text += "\nmini-MMEB hit@1 by meta-task (MMEB's grouping; chance differs per dataset):\n\n" + build_mmeb_table(records)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.with_suffix(".md").write_text(text)
    args.table.with_suffix(".json").write_text(json.dumps(records, indent=1))
    print(text, end="")
    if failed:
        print(f"failed: {sorted(failed)} (their console logs are under {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
