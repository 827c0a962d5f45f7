"""evaluate_suite end to end with a fake embedder on tmp fixtures in the original formats."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

from mmembed.errors import BadImageError, ConfigError
from mmembed.evaluation.benchmarks.retrieval import CaptionRetrievalBenchmark
from mmembed.evaluation.benchmarks.sts import STSBenchmark
from mmembed.evaluation.suite import evaluate_suite
from tests.evaluation.fakes import FakeEmbedder, vec
from tests.metrics.test_retrieval_metrics import brute_force_recall


def _img(path, red):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (red, 0, 0)).save(path)


@pytest.fixture
def caption_csv(tmp_path):
    rows = ["image,caption"]
    for i in range(12):
        _img(tmp_path / "imgs" / f"{i}.png", i)
        rows += [f"{i}.png,img{i} caption {j}" for j in range(3)]
    (tmp_path / "caps.txt").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_retrieval_images_embedded_once_and_numbers_match_brute_force(caption_csv, tmp_path):
    fake = FakeEmbedder(noise=1.2)
    cfg = CaptionRetrievalBenchmark(name="toy", format="caption_csv", captions=str(caption_csv / "caps.txt"),
                                    images=str(caption_csv / "imgs"))
    res = evaluate_suite(fake, [cfg], tmp_path / "out", batch_size=5, model="fake", progress=False)
    assert Counter(r for r, _, _ in fake.calls["image"]) == Counter(range(12))  # each image once
    entry = res["benchmarks"]["toy"]
    img = F.normalize(torch.stack([vec(f"img{i}") for i in range(12)]), dim=-1)
    caps = [f"img{i} caption {j}" for i in range(12) for j in range(3)]
    txt = fake.encode_text(caps)
    owner = [i for i in range(12) for _ in range(3)]
    t2i = brute_force_recall(txt, img, [{o} for o in owner], (1, 5, 10))
    i2t = brute_force_recall(img, txt, [{3 * i, 3 * i + 1, 3 * i + 2} for i in range(12)], (1, 5, 10))
    for k in (1, 5, 10):
        assert entry["metrics"][f"t2i_R@{k}"] == pytest.approx(t2i[k], abs=1e-3)
        assert entry["metrics"][f"i2t_R@{k}"] == pytest.approx(i2t[k], abs=1e-3)
    p = entry["protocol"]
    assert p["captions_file"].endswith("caps.txt") and p["image_dir"].endswith("imgs")
    assert p["images"] == 12 and p["captions"] == 36 and p["chance"]["t2i_R@1"] == pytest.approx(100 / 12, abs=1e-3)
    # i2t chance: 3 positives among 36 at k=1
    assert p["chance"]["i2t_R@1"] == pytest.approx(100 * 3 / 36, abs=1e-3)
    assert p["prompts"]["text"]["rendered_example"] == "img0 caption 0\nSummary above sentence in one word: "
    saved = json.loads((tmp_path / "out/results.json").read_text())
    assert saved["benchmarks"]["toy"]["metrics"] == entry["metrics"] and saved["model"] == "fake"
    md = (tmp_path / "out/results.md").read_text()
    assert "## toy (retrieval" in md and "Summary above sentence in one word: " in md and "chance" in md


def test_unreadable_image_skipped_or_raised(caption_csv, tmp_path):
    (caption_csv / "imgs" / "4.png").write_bytes(b"broken")
    cfg = CaptionRetrievalBenchmark(name="toy", format="caption_csv", captions=str(caption_csv / "caps.txt"),
                                    images=str(caption_csv / "imgs"), on_error="skip")
    res = evaluate_suite(FakeEmbedder(), [cfg], tmp_path / "o1", progress=False)
    p = res["benchmarks"]["toy"]["protocol"]
    assert p["images"] == 11 and p["captions"] == 33 and p["unreadable_images_skipped"][0].endswith("4.png")
    with pytest.raises(BadImageError, match="4.png"):
        evaluate_suite(FakeEmbedder(), [replace(cfg, on_error="raise")], tmp_path / "o2", progress=False)


def test_sts_matches_scipy_and_pools_subsets(tmp_path):
    sts = tmp_path / "STS12"
    sts.mkdir()
    for name, n in (("A", 6), ("B", 5)):
        (sts / f"STS.input.{name}.txt").write_text("".join(f"img{i % 3} {name}{i}\tx {name}{i}\n" for i in range(n)))
        (sts / f"STS.gs.{name}.txt").write_text("".join(f"{(i * 7) % 5}\n" for i in range(n)))
    fake = FakeEmbedder()
    res = evaluate_suite(fake, [STSBenchmark(name="s", format="sts12_16", path=str(sts))],
                         tmp_path / "out", progress=False)
    m = res["benchmarks"]["s"]["metrics"]
    s1 = [f"img{i % 3} {n}{i}" for n, k in (("A", 6), ("B", 5)) for i in range(k)]
    s2 = [f"x {n}{i}" for n, k in (("A", 6), ("B", 5)) for i in range(k)]
    gold = [(i * 7) % 5 for k in (6, 5) for i in range(k)]
    cos = F.cosine_similarity(fake.encode_text(s1), fake.encode_text(s2)).numpy()
    assert m["spearman"] == pytest.approx(100 * spearmanr(cos, gold).statistic, abs=1e-3)
    assert m["A"] == pytest.approx(100 * spearmanr(cos[:6], gold[:6]).statistic, abs=1e-3)
    assert res["benchmarks"]["s"]["protocol"]["pairs"] == 11


def test_duplicate_names_and_a_missing_capability_fail_before_any_embedding(tmp_path):
    sts = STSBenchmark(name="x", format="stsb", path=str(tmp_path))
    with pytest.raises(ValueError, match="unique"):
        evaluate_suite(FakeEmbedder(), [sts, sts], tmp_path)

    class TextOnly:
        def encode_text(self, texts):
            return torch.ones(len(texts), 2)

    retrieval = CaptionRetrievalBenchmark(name="r", format="caption_csv", captions=str(tmp_path / "caps.txt"),
                                          images=str(tmp_path))
    retrieval.check = lambda: None  # no files needed: the embedder is refused first
    with pytest.raises(ConfigError, match=r"benchmark 'r' \(retrieval\) needs an embedder that encodes \['image'\]"):
        evaluate_suite(TextOnly(), [retrieval], tmp_path)


def test_a_config_naming_no_class_or_a_setting_the_class_does_not_take_fails_in_one_line():
    from omegaconf import OmegaConf

    from mmembed.run.evaluation import build_benchmark

    with pytest.raises(ConfigError, match="'x': no _target_"):
        build_benchmark("x", OmegaConf.create({"format": "stsb", "path": "p"}))
    cfg = OmegaConf.create({"_target_": "mmembed.evaluation.benchmarks.sts.STSBenchmark", "format": "stsb",
                            "path": "p", "nmae": "typo"})
    with pytest.raises(ConfigError, match="'x': .*nmae") as err:
        build_benchmark("x", cfg)
    assert "\n" not in str(err.value)
    built = build_benchmark("x", OmegaConf.create({"_target_": cfg._target_, "format": "stsb", "path": "p"}))
    assert built == STSBenchmark(name="x", format="stsb", path="p")
