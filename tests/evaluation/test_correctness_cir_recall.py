"""CIRR and FashionIQ recall as the benchmark classes compute it (`run()` on files in the release layouts)
equals a brute-force numpy ranking, on 240 candidates with planted embeddings: at that size a random
ranking scores R@10 ~ 4%, so a wrong index, a reference left in the candidates or a shuffled gallery
fails (each case is checked to move the numbers).

Ties convention (mmembed.metrics.ranking.best_positive_ranks, used by both benchmarks): a query's rank
is the number of candidates scoring STRICTLY above its best positive, so a candidate tied with the target
does not push it down (ties count in the query's favour; for MMEB's argmax see results.md).
`test_ties_count_for_the_query` pins it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.evaluation.benchmarks.cirr import CIRRBenchmark
from mmembed.evaluation.benchmarks.fashioniq import FashionIQBenchmark
from mmembed.models.prompts import PromptConfig, PromptRenderer

GALLERY, QUERIES, DIM = 240, 80, 32


class PlantedEmbedder:
    """Image i (pixel (i % 256, i // 256, 0)) embeds as `gallery[i]`; a composed query whose text starts with
    "q<j>" embeds as `queries[j]`, whatever its reference image."""

    def __init__(self, gallery: np.ndarray, queries: np.ndarray):
        self.gallery, self.queries = torch.from_numpy(gallery), torch.from_numpy(queries)
        self.renderer = PromptRenderer(PromptConfig(chat_template=False), tokenizer=None)

    def encode_image(self, images, kind="image", category=None):
        red_green = [img.getpixel((0, 0))[:2] for img in images]
        return self.gallery[[r + 256 * g for r, g in red_green]]

    def encode_composed(self, images, texts, kind="cir_query", category=None):
        return self.queries[[int(t.split()[0].strip(",.")[1:]) for t in texts]]


def _image(path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (i % 256, i // 256, 0)).save(path)


def _planted(seed: int = 0):
    """Unit gallery rows; query j = its target scaled by a growing weight + noise (ranks spread from 0 to
    far beyond 50), and for every other query its reference too, strongly (ranks first unless excluded)."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((GALLERY, DIM))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    targets = rng.permutation(GALLERY)[:QUERIES]
    references = (targets + 1 + rng.integers(0, GALLERY - 1, QUERIES)) % GALLERY  # never the target
    weights = np.linspace(0.0, 2.5, QUERIES)
    queries = weights[:, None] * gallery[targets] + rng.standard_normal((QUERIES, DIM)) / np.sqrt(DIM)
    queries[::2] += 3.0 * gallery[references[::2]]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    others = [rng.choice(np.setdiff1d(np.arange(GALLERY), [t, r]), 4, replace=False) for t, r in zip(targets, references)]
    members = [sorted({int(t), int(r), *map(int, o)}) for t, r, o in zip(targets, references, others)]
    return gallery.astype(np.float32), queries.astype(np.float32), targets, references, members


def brute_force_recall(queries, gallery, targets, ks, exclude=None, allowed=None) -> dict[str, float]:
    """Percent of queries whose target has fewer than k candidates scoring strictly above it (float64 scores)."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    ranks = []
    for j, t in enumerate(targets):
        row = scores[j].copy()
        if exclude is not None:
            row[exclude[j]] = -np.inf
        if allowed is not None:
            row[np.setdiff1d(np.arange(len(row)), allowed[j])] = -np.inf
        ranks.append(int((row > row[t]).sum()))
    ranks = np.array(ranks)
    return {k: 100.0 * float((ranks < k).mean()) for k in ks}


def _cirr_files(root, members, targets, references):
    names = [f"dev-{i}-img0" for i in range(GALLERY)]
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "image_splits/split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    for i, n in enumerate(names):
        _image(root / "dev" / f"{n}.png", i)
    caps = [{"pairid": j, "reference": names[r], "target_hard": names[t], "caption": f"q{j} make it so",
             "img_set": {"members": [names[m] for m in member]}}
            for j, (t, r, member) in enumerate(zip(targets, references, members))]
    (root / "captions/cap.rc2.val.json").write_text(json.dumps(caps))


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def cirr_metrics(planted, tmp_path_factory):
    gallery, queries, targets, references, members = planted
    root = tmp_path_factory.mktemp("cirr")
    _cirr_files(root, members, targets, references)
    result = CIRRBenchmark(name="cirr", root=str(root)).run(PlantedEmbedder(gallery, queries), progress=False)
    assert result["protocol"]["candidates"] == GALLERY and result["protocol"]["queries"] == QUERIES
    return result["metrics"]


def test_cirr_recall_equals_brute_force(planted, cirr_metrics):
    gallery, queries, targets, references, members = planted
    expected = brute_force_recall(queries, gallery, targets, (1, 5, 10, 50), exclude=references)
    for k, value in expected.items():
        assert cirr_metrics[f"R@{k}"] == pytest.approx(value, abs=1e-9)
    assert 0 < expected[10] < expected[50] < 100  # the planted ranks spread across the cut-offs
    # leaving the reference in would change the numbers: half the queries point at it
    assert brute_force_recall(queries, gallery, targets, (1,))[1] < expected[1]


def test_cirr_subset_recall_equals_brute_force(planted, cirr_metrics):
    gallery, queries, targets, references, members = planted
    allowed = [[m for m in member if m != r] for member, r in zip(members, references)]
    expected = brute_force_recall(queries, gallery, targets, (1, 2, 3), allowed=allowed)
    for k, value in expected.items():
        assert cirr_metrics[f"Rsubset@{k}"] == pytest.approx(value, abs=1e-9)
    assert cirr_metrics["Avg"] == pytest.approx((cirr_metrics["R@5"] + cirr_metrics["Rsubset@1"]) / 2)
    assert expected[1] < 100


def test_a_random_model_fails_on_240_candidates(planted):
    gallery, queries, targets, references, members = planted
    shuffled = queries[np.random.default_rng(1).permutation(QUERIES)]
    assert brute_force_recall(shuffled, gallery, targets, (10,), exclude=references)[10] <= 15.0
    assert brute_force_recall(queries, gallery, targets, (10,), exclude=references)[10] >= 40.0


def test_fashioniq_recall_equals_brute_force(planted, tmp_path):
    gallery, queries, targets, references, members = planted
    names = [f"D{i}" for i in range(GALLERY)]
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "image_splits/split.dress.val.json").write_text(json.dumps(names))
    for i, n in enumerate(names):
        _image(tmp_path / "images" / f"{n}.png", i)
    (tmp_path / "captions/cap.dress.val.json").write_text(json.dumps(
        [{"candidate": names[r], "target": names[t], "captions": [f"q{j} longer", "darker"]}
         for j, (t, r) in enumerate(zip(targets, references))]))
    bench = FashionIQBenchmark(name="fiq", root=str(tmp_path), categories=["dress"])
    metrics = bench.run(PlantedEmbedder(gallery, queries), progress=False)["metrics"]
    expected = brute_force_recall(queries, gallery, targets, (10, 50))  # FashionIQ keeps the reference
    assert metrics["dress_R@10"] == pytest.approx(expected[10], abs=1e-9)
    assert metrics["dress_R@50"] == pytest.approx(expected[50], abs=1e-9)
    assert metrics["avg_R@10"] == metrics["dress_R@10"]
    assert 0 < expected[10] < expected[50] < 100


def test_ties_count_for_the_query(tmp_path):
    """Query 0 equals its target, and two other candidates are exact copies of the target: the target
    still ranks first (0 candidates strictly above). Query 1 sits closer to 3 candidates than to its
    target: rank 3, a miss at R@1 and a hit at R@5."""
    gallery = F.normalize(torch.randn(GALLERY, DIM, generator=torch.Generator().manual_seed(3)), dim=-1).numpy()
    gallery[[5, 6]] = gallery[4]  # two exact ties with query 0's target
    queries = np.stack([gallery[4], gallery[10]])
    gallery[[11, 12, 13]] = gallery[10]
    gallery[10] = F.normalize(torch.from_numpy(gallery[10] + 0.3 * gallery[20]), dim=0).numpy()
    root = tmp_path / "cirr"
    _cirr_files(root, [[4, 5, 6, 7], [10, 11, 12, 13, 14]], [4, 10], [7, 14])
    metrics = CIRRBenchmark(name="cirr", root=str(root)).run(
        PlantedEmbedder(gallery, queries.astype(np.float32)), progress=False)["metrics"]
    assert metrics["R@1"] == 50.0 and metrics["R@5"] == 100.0
    assert metrics["Rsubset@1"] == 50.0 and metrics["Rsubset@3"] == 50.0  # query 1: 3 subset members above
    assert brute_force_recall(queries, gallery, [4, 10], (1, 5), exclude=[7, 14]) == {1: 50.0, 5: 100.0}
