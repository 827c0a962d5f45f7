"""mmembed.inference.faiss_index: flat / IVF / HNSW inner-product indexes, persisted and memory-mapped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import faiss  # a test dependency (pyproject's `test` extra)
import numpy as np
import pytest

from mmembed.errors import ConfigError
from mmembed.inference.faiss_files import read_index, sidecar_path, write_index
from mmembed.inference.faiss_index import build_index, default_nlist, search, set_search_params
from tests.conftest import REPO

N, D, CLUSTERS, K = 3000, 32, 30, 10


def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around CLUSTERS shared random centres (noise norm ~0.5 of the centre's); and their cluster."""
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    label = rng.integers(0, CLUSTERS, n)
    x = centres[label] + rng.standard_normal((n, D)).astype(np.float32) * (0.5 / np.sqrt(D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), label


@pytest.fixture(scope="module")
def data():
    return clustered(N, seed=1)


@pytest.fixture(scope="module")
def queries():
    """Drawn like the data, not database members."""
    return clustered(200, seed=2)


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def recall_at_k(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(ids, exact, strict=True)]))


@pytest.fixture(scope="module")
def indexes(data):
    x, _ = data
    return {kind: build_index(x, kind) for kind in ("flat", "ivf", "hnsw")}


def test_flat_equals_brute_force_numpy(data, queries, indexes):
    x, q = data[0], queries[0]
    scores, ids = search(indexes["flat"], q, K)
    ref_scores, ref_ids = brute_force(x, q, K)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (200, K)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_database_vectors_find_themselves_first(data, indexes, kind):
    x, _ = data
    rows = np.arange(0, N, 7)
    scores, ids = search(indexes[kind], x[rows], K)
    np.testing.assert_array_equal(ids[:, 0], rows)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_approximate_indexes_recall_against_exact(data, queries, indexes):
    # Each query's exact top-10 lies in its own cluster (checked first: that is what makes the thresholds
    # meaningful). IVF's default probes 16 of 219 lists; k-means splits each of the 30 clusters over ~7 lists
    # that sit next to each other, so the nearest lists hold the top-10. HNSW (M=16, ef_search=256) keeps 256
    # candidates while walking a graph of 3,000 32-d vectors whose ~100-vector clusters are far apart, so it
    # should not lose the query's cluster. Measured: both 1.0; 0.98 (40 of 2,000 neighbours) leaves room for
    # HNSW's thread-order-dependent construction and near-ties at rank 10.
    x, labels = data
    q, q_labels = queries
    _, exact = brute_force(x, q, K)
    assert (labels[exact] == q_labels[:, None]).all()
    assert indexes["ivf"].nlist == default_nlist(N) == 219 and indexes["ivf"].nprobe == 16
    assert recall_at_k(search(indexes["ivf"], q, K)[1], exact) >= 0.98
    assert recall_at_k(search(indexes["hnsw"], q, K)[1], exact) >= 0.98


def test_ivf_probing_every_list_is_exact_and_one_list_is_not(data, queries):
    x, q = data[0], queries[0]
    ivf = build_index(x, "ivf", nlist=64, nprobe=64)
    _, exact = brute_force(x, q, K)
    np.testing.assert_array_equal(search(ivf, q, K)[1], exact)
    set_search_params(ivf, nprobe=1)
    assert recall_at_k(search(ivf, q, K)[1], exact) < 1.0  # a query near a list boundary misses neighbours


def test_k_larger_than_the_index_returns_every_row():
    x = clustered(5, seed=3)[0]
    _, ids = search(build_index(x, "flat"), x[0], k=10)
    assert ids.shape == (1, 5) and sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]


def test_ivf_pads_with_minus_one_when_the_probed_lists_hold_fewer_than_k():
    x = clustered(200, seed=5)[0]
    ivf = build_index(x, "ivf", nlist=50, nprobe=1)  # ~4 vectors per list, 20 asked for
    scores, ids = search(ivf, x[:3], 20)
    assert (ids[:, -1] == -1).all() and (scores[ids == -1] == np.finfo(np.float32).min).all()
    assert (ids[:, 0] == [0, 1, 2]).all()


def mapped_files() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_write_then_read_memory_mapped_gives_the_same_results(data, queries, indexes, kind, tmp_path):
    q = queries[0]
    path = write_index(indexes[kind], tmp_path / f"{kind}.faiss", extra={"model": "tiny"})
    expected = {
        "flat": {},
        "ivf": {"nlist": 219, "nprobe": 16},
        "hnsw": {"M": 16, "ef_construction": 40, "ef_search": 256},
    }[kind]
    assert json.loads(sidecar_path(path).read_text()) == {
        "format": "mmembed-faiss/1",
        "kind": kind,
        "options": expected,
        "n": N,
        "d": D,
        "extra": {"model": "tiny"},
    }
    loaded = read_index(path, mmap=True, expected_n=N, expected_d=D)
    before = search(indexes[kind], q, K)
    after = search(loaded, q, K)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    if sys.platform == "linux":
        assert str(path) in mapped_files()  # the data is read through a mapping of the file, not copied
    if kind == "ivf":
        assert isinstance(faiss.downcast_InvertedLists(loaded.invlists), faiss.OnDiskInvertedLists)
    in_ram = read_index(path, mmap=False)
    np.testing.assert_array_equal(search(in_ram, q, K)[1], before[1])


def test_search_settings_survive_write_and_read(data, tmp_path):
    x = data[0]
    ivf = set_search_params(build_index(x, "ivf", nlist=50), nprobe=7)
    hnsw = set_search_params(build_index(x[:500], "hnsw", M=8, ef_construction=20), ef_search=99)
    assert read_index(write_index(ivf, tmp_path / "ivf.faiss")).nprobe == 7
    loaded = read_index(write_index(hnsw, tmp_path / "hnsw.faiss"))
    assert (loaded.hnsw.efSearch, loaded.hnsw.efConstruction, loaded.hnsw.nb_neighbors(1)) == (99, 20, 8)


def test_small_corpus_gets_a_default_nprobe_it_can_use():
    x = clustered(100, seed=4)[0]
    ivf = build_index(x, "ivf")
    assert (ivf.nlist, ivf.nprobe) == (40, 16)  # 4*sqrt(100) = 40 lists
    x = clustered(10, seed=4)[0]
    ivf = build_index(x, "ivf")
    assert (ivf.nlist, ivf.nprobe) == (10, 10)  # 4*sqrt(10) = 13 > 10 vectors: 10 lists, fewer than the default 16


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("annoy", {}, r"index kind 'annoy': expected one of \('flat', 'ivf', 'hnsw'\)"),
        ("hnsw", {"nprobe": 4}, r"hnsw index has no option\(s\) \['nprobe'\]"),
        ("ivf", {"nlist": 3001}, r"nlist=3001 must be between 1 and the number of vectors \(3000\)"),
        ("ivf", {"nlist": 0}, r"nlist=0 must be between 1 and the number of vectors \(3000\)"),
        ("ivf", {"nlist": 100, "train_size": 50}, r"train_size=50: k-means needs nlist \(100\) to n \(3000\)"),
        ("ivf", {"nlist": 100, "nprobe": 101}, r"nprobe=101: expected 1..nlist \(100\)"),
        ("hnsw", {"M": 0}, r"hnsw options must be >= 1"),
        ("ivf", {"nlist": 2.5}, r"ivf option nlist=2.5: expected a non-negative integer"),
    ],
)
def test_bad_build_settings_raise_config_error(data, kind, options, message):
    with pytest.raises(ConfigError, match=message):
        build_index(data[0], kind, **options)


def test_bad_vectors_raise_config_error(data):
    x = data[0]
    with pytest.raises(ConfigError, match="must be float32, got float64"):
        build_index(x.astype(np.float64))
    with pytest.raises(ConfigError, match=r"row 2 has norm 2 \(1 such rows\)"):
        scaled = x[:5].copy()
        scaled[2] *= 2
        build_index(scaled)
    with pytest.raises(ConfigError, match=r"row 0 has norm nan"):
        build_index(np.full((3, D), np.nan, np.float32))
    with pytest.raises(ConfigError, match=r"non-empty \[n, d\] numpy array, got \(32,\)"):
        build_index(x[0])


def test_query_dimension_mismatch_and_bad_k(indexes):
    with pytest.raises(ConfigError, match=r"queries have shape \(2, 16\); this index holds 32-d vectors"):
        search(indexes["flat"], np.zeros((2, 16), np.float32), K)
    with pytest.raises(ConfigError, match="k=0: expected >= 1"):
        search(indexes["flat"], np.zeros((2, D), np.float32), 0)


def test_search_params_must_fit_the_kind(data, indexes):
    with pytest.raises(ConfigError, match="nprobe applies to ivf indexes only; this index is hnsw"):
        set_search_params(indexes["hnsw"], nprobe=4)
    with pytest.raises(ConfigError, match="ef_search applies to hnsw indexes only; this index is flat"):
        set_search_params(indexes["flat"], ef_search=4)
    with pytest.raises(ConfigError, match=r"nprobe=500: expected 1..nlist \(219\)"):
        set_search_params(indexes["ivf"], nprobe=500)
    with pytest.raises(ConfigError, match="is not an inner-product flat/ivf/hnsw index"):
        set_search_params(faiss.IndexFlatL2(D), nprobe=1)


def test_reading_checks_the_sidecar_and_the_expected_shape(indexes, tmp_path):
    path = write_index(indexes["flat"], tmp_path / "flat.faiss")
    with pytest.raises(ConfigError, match=r"index has dimension 32, expected 64; rebuild it"):
        read_index(path, expected_d=64)
    with pytest.raises(ConfigError, match=r"index has vectors 3000, expected 10; rebuild it"):
        read_index(path, expected_n=10)
    other = write_index(indexes["ivf"], tmp_path / "ivf.faiss")
    sidecar_path(path).write_text(sidecar_path(other).read_text())  # a sidecar that belongs to another index
    with pytest.raises(ConfigError, match="holds a flat index of 3000 x 32 but its sidecar says ivf 3000 x 32"):
        read_index(path)
    sidecar_path(path).unlink()
    with pytest.raises(ConfigError, match=r"expected a FAISS index file and its sidecar flat.faiss.json"):
        read_index(path)


@pytest.mark.slow  # two perf script processes building FAISS indexes
def test_benchmark_script_runs_end_to_end(tmp_path):
    """perf/faiss_indexes.py at a tiny size: every kind reports, flat is its own exact reference."""
    out, raw = tmp_path / "faiss.md", tmp_path / "faiss.json"
    cmd = [sys.executable, str(REPO / "perf/faiss_indexes.py"), "--n", "3000", "--queries", "50", "--single", "5",
           "--clusters", "64", "--topics", "8", "--nprobe", "1,219", "--ef-search", "16", "--out", str(out),
           "--json", str(raw), "--workdir", str(tmp_path / "work")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["kind"]: r for r in json.loads(raw.read_text())["results"]}
    assert results["flat"]["searches"][0]["recall"] == 1.0
    assert results["ivf"]["options"] == {"nlist": 219, "nprobe": 16}
    ivf_recall = {s["setting"]: s["recall"] for s in results["ivf"]["searches"]}
    assert ivf_recall[219] == 1.0 and ivf_recall[1] < 1.0  # probing all 219 lists is exhaustive
    text = out.read_text()
    assert "| ivf | nprobe=219 | 1.0000 |" in text and "| hnsw | ef_search=16 |" in text
    assert proc.stdout.endswith(text + "\n")  # the table is also printed

    # --resume reuses the data and every finished kind: nothing is generated or measured again.
    again = subprocess.run([*cmd, "--resume"], check=False, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "data:" not in again.stdout and "done at" not in again.stdout
    assert json.loads(raw.read_text())["results"] == list(results.values())
