"""One markdown table from evaluation runs' results.json files.

    python experiments/results_table.py logs/eval/runs/*/results.json [--out experiments/results/table.md]

Rows are runs (labelled by --labels or model + adapter), columns the local benchmarks: STS12, STS-B
test, SICK-R test, Flickr8k 1k test retrieval, CIRR local queries, ImageNet-1000 zero-shot. A
"chance" row gives a random ranking's expected score (from the protocol each run recorded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (benchmark name in the suite, metric key, column header)
COLUMNS = [
    ("sts12", "spearman", "STS12"),
    ("stsb", "spearman", "STS-B"),
    ("sickr", "spearman", "SICK-R"),
    ("flickr8k_1k_test", "t2i_R@1", "F8k-test t2i R@1"),
    ("flickr8k_1k_test", "t2i_R@10", "F8k-test t2i R@10"),
    ("flickr8k_1k_test", "i2t_R@1", "F8k-test i2t R@1"),
    ("flickr8k_1k_test", "i2t_R@10", "F8k-test i2t R@10"),
    ("cirr_local", "R@1", "CIRR-12 R@1"),
    ("cirr_local", "Rsubset@1", "CIRR-12 Rs@1"),
    ("imagenet1k", "acc@1", "IN-1k acc@1"),
    ("imagenet1k", "acc@5", "IN-1k acc@5"),
]
STS = ("sts12", "stsb", "sickr")


def label(results: dict, path: Path) -> str:
    """The model's name, plus the training run that wrote the adapter (<run>/adapters/<name>) if any."""
    model = Path(str(results.get("model"))).name
    adapter = results.get("adapter")
    return f"{model} + {Path(adapter).parent.parent.name}/{Path(adapter).name}" if adapter else model


def cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def build_table(runs: list[tuple[str, dict]]) -> str:
    header = ["run"] + [c[2] for c in COLUMNS] + ["STS avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in runs:
        bench = results.get("benchmarks", {})
        values = [bench.get(b, {}).get("metrics", {}).get(m) for b, m, _ in COLUMNS]
        sts = [bench[b]["metrics"]["spearman"] for b in STS if b in bench]
        avg = sum(sts) / len(sts) if len(sts) == len(STS) else None
        lines.append("| " + " | ".join([name] + [cell(v) for v in values] + [cell(avg)]) + " |")
    chance = []
    for b, m, _ in COLUMNS:
        found = next((r["benchmarks"][b]["protocol"].get("chance", {}).get(m) for _, r in runs
                      if b in r.get("benchmarks", {})), None)
        chance.append(0.0 if b in STS and any(b in r.get("benchmarks", {}) for _, r in runs) else found)
    lines.append("| " + " | ".join(["chance"] + [cell(v) for v in chance] + ["0.0"]) + " |")
    return "\n".join(lines) + "\n"


def protocol_notes(runs: list[tuple[str, dict]]) -> str:
    """Candidate/query counts per benchmark (from the first run that has it), so the table says what it scores."""
    seen, notes = set(), []
    for _, results in runs:
        for name, entry in results.get("benchmarks", {}).items():
            if name in seen:
                continue
            seen.add(name)
            p = entry["protocol"]
            counts = {k: p[k] for k in ("pairs", "images", "captions", "queries", "candidates", "classes") if k in p}
            notes.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(notes) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files (or run folders holding one)")
    parser.add_argument("--labels", nargs="*", help="row labels, one per results file")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = []
    for i, path in enumerate(args.results):
        path = path / "results.json" if path.is_dir() else path
        results = json.loads(path.read_text(encoding="utf-8"))
        runs.append((args.labels[i] if args.labels and i < len(args.labels) else label(results, path), results))
    text = build_table(runs) + "\n" + protocol_notes(runs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
