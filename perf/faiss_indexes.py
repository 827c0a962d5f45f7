"""Flat vs IVF vs HNSW (mmembed.inference.faiss_index) on 1M clustered 576-d unit vectors, in one run.

    python perf/faiss_indexes.py                        # 1,000,000 x 576, writes perf/results/faiss_indexes.md
    python perf/faiss_indexes.py --n 100000 --out /tmp/faiss_100k.md   # development size

Data (576-d = the default model's embedding size): `--topics` random directions; `--clusters` centres, each
a topic plus Gaussian noise; every vector a centre plus Gaussian noise (cluster spreads vary 0.5-1.5x, cluster
sizes are log-normal), then L2-normalised. The noise has a decaying spectrum (variance of dimension j ~ 1/j,
effective dimension ~29), as embedding spectra do: real embeddings are neither uniform on the sphere nor
isotropic. Queries are fresh draws from the same mixture, not database members.

Each index kind runs in its own subprocess (its memory does not mix with the others'), one after the other, with
`faiss.omp_set_num_threads(--threads)` and OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep, so CPU time counts
work, not spinning). Per kind: build (wall, process CPU time, peak private-memory delta: RssAnon sampled every
10 ms minus RssAnon before the build; the database itself is a read-only memory-mapped .npy, so it is not
counted), write_index, then read_index(mmap=True) and search that mapped index: one untimed warm-up, then per
setting (nprobe / ef_search) the whole query batch in one call and `--single` queries one at a time.
Recall@10 = |top-10 ∩ exact top-10| / 10, averaged over queries; exact = the flat index. Ratios are against flat.
`--workdir DIR --resume` keeps the data and the kinds already measured in DIR (each kind's row says when it
finished), so a run cut short (e.g. by other jobs' memory use) continues with the missing kinds.
Disk page-ins = major page faults while searching (pages of the mapped index read from disk because the page
cache did not hold them). On a shared machine the parent waits (up to --wait-memory-s) before each kind until
~2.2x the database size is available, and each child sets oom_score_adj=1000 so that, should memory run out, the
kernel kills the benchmark rather than another job. A setting meets the target when recall@10 >= 0.95 and both
batch and single-query latency are >= 10x lower than flat's. On a machine shared with other jobs wall clock is
noisy; CPU time is the steadier measure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_RECALL, TARGET_SPEEDUP = 0.95, 10.0
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered_vectors(n, d, n_clusters, n_topics, seed, decay=1.0, chunk=100_000, out=None) -> np.ndarray:
    """n unit vectors from a fixed mixture (centres, spreads and sizes come from seed 0; `seed` draws the points).

    `decay`: noise variance of dimension j ~ j^-decay (0 = isotropic). Written into `out` if given (a memmap).
    """
    crng = np.random.default_rng(0)
    topics = crng.standard_normal((n_topics, d), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[crng.integers(0, n_topics, n_clusters)] + crng.standard_normal(
        (n_clusters, d), np.float32
    ) / np.sqrt(d)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = crng.lognormal(0, 1, n_clusters)
    spread = crng.uniform(0.5, 1.5, n_clusters).astype(np.float32)
    dim_std = np.arange(1, d + 1, dtype=np.float32) ** (-decay / 2)  # a std, so half the variance exponent
    dim_std *= np.sqrt(d) / np.linalg.norm(dim_std)  # noise norm ~ spread (the centre's norm is 1)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32) if out is None else out
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        label = rng.choice(n_clusters, m, p=weights / weights.sum())
        x = rng.standard_normal((m, d), dtype=np.float32) * dim_std * (spread[label, None] / np.sqrt(d))
        x += centres[label]
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def proc_mb(field: str, path: str = "/proc/self/status") -> float:
    with open(path) as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields[field].split()[0]) / 1024


def private_mb() -> float:
    """RssAnon: this process's private resident memory (a memory-mapped file's pages are not in it)."""
    return proc_mb("RssAnon")


def file_resident_mb() -> float:
    return proc_mb("RssFile")


def major_faults() -> int:
    """Page faults that had to read from disk: a mapped index that does not fit the page cache shows here."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


class PeakPrivate:
    def __enter__(self):
        self.start = self.peak = private_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, private_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, private_mb())


def volunteer_for_oom_killer() -> None:
    """On a shared machine, if memory runs out, let the kernel kill this benchmark rather than someone's job."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def wait_for_memory(need_mb: float, timeout_s: float) -> float:
    """Wait (up to timeout_s) until the machine has need_mb available: other jobs' memory use comes and goes."""
    deadline = time.perf_counter() + timeout_s
    while (available := proc_mb("MemAvailable", "/proc/meminfo")) < need_mb and time.perf_counter() < deadline:
        print(f"waiting for memory: {available:.0f} MB available, {need_mb:.0f} MB wanted", flush=True)
        time.sleep(30)
    return available


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def recall_at_10(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids[:, :10], exact[:, :10], strict=True)]))


def run_kind(args) -> dict:
    """One index kind, in this (child) process: build, write, mmap-read, search per setting."""
    import faiss

    from mmembed.inference.faiss_files import read_index, sidecar_path, write_index
    from mmembed.inference.faiss_index import build_index, search, set_search_params

    volunteer_for_oom_killer()
    faiss.omp_set_num_threads(args.threads)
    work = Path(args.workdir)
    x = np.load(work / "data.npy", mmap_mode="r")
    q = np.load(work / "queries.npy")
    options = {"flat": {}, "ivf": {}, "hnsw": {"M": args.hnsw_m, "ef_construction": args.ef_construction}}[args.child]
    settings = {"flat": [None], "ivf": args.nprobe, "hnsw": args.ef_search}[args.child]
    result = {"kind": args.child, "options": options, "mem_available_mb": proc_mb("MemAvailable", "/proc/meminfo")}

    with PeakPrivate() as mem:
        w0, c0 = clock()
        index = build_index(x, args.child, **options)
        w1, c1 = clock()
    result["build"] = {"wall_s": w1 - w0, "cpu_s": c1 - c0, "peak_private_delta_mb": mem.peak - mem.start}
    path = write_index(index, work / f"{args.child}.faiss")
    result["options"] = json.loads(sidecar_path(path).read_text())["options"]
    del index, x  # x: unmap the database, so that file pages resident below are the index file's
    gc.collect()
    result["file_mb"] = path.stat().st_size / 2**20

    before, file_before = private_mb(), file_resident_mb()
    w0, _ = clock()
    index = read_index(path, mmap=True)
    result["load"] = {"wall_s": clock()[0] - w0, "private_delta_mb": private_mb() - before}
    exact = np.load(work / "exact.npy") if args.child != "flat" else None

    def configure(setting):
        if args.child == "ivf":
            set_search_params(index, nprobe=setting)
        elif args.child == "hnsw":
            set_search_params(index, ef_search=setting)

    configure(settings[-1])
    search(index, q[:50], 10)  # warm-up: page the mapped file in
    rows = []
    for setting in settings:
        configure(setting)
        faults = major_faults()
        w0, c0 = clock()
        scores, ids = search(index, q, 10)
        w1, c1 = clock()
        if exact is None:  # flat: these are the exact neighbours
            exact = ids
            np.save(work / "exact.npy", ids)
            result["mean_cosine"] = {"1st": float(scores[:, 0].mean()), "10th": float(scores[:, 9].mean())}
        single, deadline = [], time.perf_counter() + args.single_budget_s
        for row in q[: args.single]:
            s0 = time.perf_counter()
            search(index, row, 10)
            single.append(time.perf_counter() - s0)
            if s0 > deadline:  # a thrashing index would otherwise take hours
                break
        rows.append(
            {
                "setting": setting,
                "recall": recall_at_10(ids, exact),
                "batch_wall_ms": (w1 - w0) / len(q) * 1e3,
                "batch_cpu_ms": (c1 - c0) / len(q) * 1e3,
                "single_p50_ms": float(np.median(single)) * 1e3,
                "single_p95_ms": float(np.percentile(single, 95)) * 1e3,
                "single_n": len(single),
                "major_faults": major_faults() - faults,
            }
        )
    result["after_queries"] = {
        "private_delta_mb": private_mb() - before,
        "file_resident_mb": file_resident_mb() - file_before,
    }
    result["searches"] = rows
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def meets_target(row: dict, flat: dict) -> bool:
    return (
        row["recall"] >= TARGET_RECALL
        and flat["batch_wall_ms"] / row["batch_wall_ms"] >= TARGET_SPEEDUP
        and flat["single_p50_ms"] / row["single_p50_ms"] >= TARGET_SPEEDUP
    )


def pick(rows: list[dict], flat: dict) -> dict | None:
    """The fastest setting (single-query p50) that meets the target, if any."""
    return min((r for r in rows if meets_target(r, flat)), key=lambda r: r["single_p50_ms"], default=None)


SETTING_NAME = {"flat": "exact", "ivf": "nprobe", "hnsw": "ef_search"}
BUILD_HEADER = (
    "| index | options | build wall s | build CPU s | build wall vs flat | peak private memory delta MB | vs flat "
    "| file MB | mmap load s | private MB after load | private MB after queries | index file resident MB after queries "
    "| machine MemAvailable MB at start | finished |"
)
SEARCH_HEADER = (
    "| index | setting | recall@10 | batch ms/query wall | batch ms/query CPU | batch speedup wall / CPU "
    "| single p50 ms | single p95 ms | single speedup (p50) | disk page-ins | meets target |"
)


def build_row(r: dict, flat: dict) -> str:
    b, fb = r["build"], flat["build"]
    # Build options only: the search settings (nprobe, ef_search) are swept in the search table.
    opts = ", ".join(f"{k}={v}" for k, v in r["options"].items() if k not in SETTING_NAME.values()) or "-"
    cells = [
        r["kind"], opts, f"{b['wall_s']:.1f}", f"{b['cpu_s']:.1f}", f"{b['wall_s'] / fb['wall_s']:.1f}x",
        f"{b['peak_private_delta_mb']:.0f}", f"{b['peak_private_delta_mb'] / fb['peak_private_delta_mb']:.2f}x",
        f"{r['file_mb']:.0f}", f"{r['load']['wall_s']:.2f}", f"{r['load']['private_delta_mb']:.0f}",
        f"{r['after_queries']['private_delta_mb']:.0f}", f"{r['after_queries']['file_resident_mb']:.0f}",
        f"{r['mem_available_mb']:.0f}", r["finished"],
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def search_row(kind: str, s: dict, flat: dict, picked: dict | None) -> str:
    setting = "exact" if s["setting"] is None else f"{SETTING_NAME[kind]}={s['setting']}"
    meets = "" if kind == "flat" else "**picked**" if s is picked else "yes" if meets_target(s, flat) else "no"
    cells = [
        kind, setting, f"{s['recall']:.4f}", f"{s['batch_wall_ms']:.3f}", f"{s['batch_cpu_ms']:.3f}",
        f"{flat['batch_wall_ms'] / s['batch_wall_ms']:.1f}x / {flat['batch_cpu_ms'] / s['batch_cpu_ms']:.1f}x",
        f"{s['single_p50_ms']:.3f}", f"{s['single_p95_ms']:.3f}", f"{flat['single_p50_ms'] / s['single_p50_ms']:.1f}x",
        f"{s['major_faults']}", meets,
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def report(results: list[dict], meta: dict) -> str:
    flat = next(r for r in results if r["kind"] == "flat")
    fs = flat["searches"][0]
    m = meta
    lines = [
        "# FAISS indexes: flat vs IVF vs HNSW",
        "",
        (
            f"`{m['command']}` ({m['date']}; faiss {m['faiss']}, {m['threads']} threads, {m['cpus']} CPUs shared with "
            f"other jobs). {m['n']:,} x {m['d']} clustered unit vectors ({m['clusters']} clusters in {m['topics']} "
            f"topics, noise variance of dimension j ~ 1/j), {m['queries']} queries drawn like the data (mean cosine of "
            f"a query's exact 1st / 10th neighbour: {m['top1']:.3f} / {m['top10']:.3f}). Single-query latency: the first "
            f"{m['single']} queries, one call each. Ratios are flat / index (higher is better), except memory "
            "(index / flat). The `finished` column dates each kind (`--resume` measures only the missing kinds, on the "
            "same data). How it is measured: the docstring of perf/faiss_indexes.py."
        ),
        "",
        "## Build and memory",
        "",
        BUILD_HEADER,
        "|" + "---|" * (BUILD_HEADER.count("|") - 1),
        *(build_row(r, flat) for r in results),
        "",
        "## Search (the index read back with read_index(mmap=True), k = 10)",
        "",
        SEARCH_HEADER,
        "|" + "---|" * (SEARCH_HEADER.count("|") - 1),
    ]
    picks = {r["kind"]: pick(r["searches"], fs) for r in results if r["kind"] != "flat"}
    for r in results:
        lines += [search_row(r["kind"], s, fs, picks.get(r["kind"])) for s in r["searches"]]
    lines += ["", (f"Target: recall@10 >= {TARGET_RECALL} and >= {TARGET_SPEEDUP:.0f}x lower latency than exact search"
              " (batch and single query, wall clock).")]  # fmt: skip
    for r in results:
        short = [s for s in r["searches"] if s["single_n"] < m["single"]]
        if short:
            lines.append(f"- {r['kind']}: single-query latency over only {min(s['single_n'] for s in short)} queries "
                         "for some settings (time budget --single-budget-s).")  # fmt: skip
        worst = max(r["searches"], key=lambda s: s["major_faults"])
        if worst["major_faults"] * PAGE_MB > 0.01 * r["file_mb"]:  # a few stray pages are noise, 1% of the file is not
            lines.append(f"- {r['kind']}, {SETTING_NAME[r['kind']]}={worst['setting']}: {worst['major_faults']} pages "
                         f"({worst['major_faults'] * PAGE_MB:.0f} MB) of the mapped index read from disk while searching "
                         "(the page cache did not hold the whole file then): that row's latency includes disk reads.")  # fmt: skip
    for kind, choice in picks.items():
        if choice is None:
            lines.append(f"- {kind}: no swept setting meets the target.")
            continue
        lines.append(
            f"- {kind}: {SETTING_NAME[kind]}={choice['setting']} meets it: recall@10 {choice['recall']:.4f}, "
            f"{fs['single_p50_ms'] / choice['single_p50_ms']:.0f}x lower single-query and "
            f"{fs['batch_wall_ms'] / choice['batch_wall_ms']:.0f}x lower batch latency than flat."
        )
    return "\n".join(lines) + "\n"


def run_child(kind: str, work: Path, args, env: dict) -> None:
    # The index's private copy, plus the page cache to hold the database (build) or index file (search).
    need = 2.2 * args.n * args.d * 4 / 2**20
    available = wait_for_memory(need, args.wait_memory_s)
    if available < need:
        raise SystemExit(f"{kind}: only {available:.0f} MB of memory available, {need:.0f} MB wanted; "
                         "rerun later with --workdir DIR --resume to keep the kinds already measured")  # fmt: skip
    cmd = [sys.executable, __file__, "--child", kind, "--workdir", str(work)]
    cmd += [
        f"--{k.replace('_', '-')}={v if not isinstance(v, list) else ','.join(map(str, v))}"
        for k, v in vars(args).items()
        if k not in ("child", "workdir", "out", "json", "resume") and v is not None
    ]
    subprocess.run(cmd, env=env, check=True)
    (work / f"{kind}.faiss").unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--topics", type=int, default=64)
    parser.add_argument("--single", type=int, default=100, help="queries timed one call at a time")
    parser.add_argument("--single-budget-s", type=float, default=120, help="stop timing single queries after this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--wait-memory-s", type=float, default=3600, help="how long to wait for free memory per kind")
    parser.add_argument("--kinds", default="flat,ivf,hnsw")
    parser.add_argument("--nprobe", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8, 16, 32, 64])
    parser.add_argument("--ef-search", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64, 128, 256])
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", default=str(REPO / "perf/results/faiss_indexes.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--resume", action="store_true", help="reuse --workdir's data and finished kinds")
    parser.add_argument("--report-from", help="only render the tables again from a --json file of an earlier run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report_from:
        raw = json.loads(Path(args.report_from).read_text())
        return write_report(raw["results"], raw["meta"], args.out)
    if args.child:
        result = run_kind(args)
        (Path(args.workdir) / f"{args.child}.json").write_text(json.dumps(result))
        return 0

    kinds = args.kinds.split(",")
    if kinds[0] != "flat":
        parser.error("--kinds must start with flat: it gives the exact neighbours and the reference timings")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="faiss_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    data_spec = {k: getattr(args, k) for k in ("n", "d", "clusters", "topics", "queries")}
    try:
        t0 = time.perf_counter()
        if not (
            args.resume and (work / "data.json").is_file() and json.loads((work / "data.json").read_text()) == data_spec
        ):
            for name in ("data.json", "flat.json", "ivf.json", "hnsw.json"):  # results for other data
                (work / name).unlink(missing_ok=True)
            data = np.lib.format.open_memmap(work / "data.npy", "w+", np.float32, (args.n, args.d))
            clustered_vectors(args.n, args.d, args.clusters, args.topics, seed=1, out=data)
            data.flush()
            del data
            np.save(work / "queries.npy", clustered_vectors(args.queries, args.d, args.clusters, args.topics, seed=2))
            (work / "data.json").write_text(json.dumps(data_spec))
            print(f"data: {args.n:,} x {args.d} in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO / "src")}
        results = []
        for kind in kinds:
            done = work / f"{kind}.json"
            if not (args.resume and done.is_file()):
                run_child(kind, work, args, env)
                print(f"{kind}: done at {time.perf_counter() - t0:.0f} s", flush=True)
            result = json.loads(done.read_text())
            result["finished"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(done.stat().st_mtime))
            results.append(result)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    import faiss

    meta = {
        "command": "python perf/faiss_indexes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "faiss": faiss.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "n": args.n,
        "d": args.d,
        "clusters": args.clusters,
        "topics": args.topics,
        "queries": args.queries,
        "single": args.single,
        "top1": results[0]["mean_cosine"]["1st"],
        "top10": results[0]["mean_cosine"]["10th"],
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return write_report(results, meta, args.out)


def write_report(results: list[dict], meta: dict, out: str) -> int:
    text = report(results, meta)
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
