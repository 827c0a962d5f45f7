"""The real embedding path (tiny random SmolLlava) through the suite on the shared data's small sets."""

from __future__ import annotations

import json

import pytest

from mmembed.evaluation.benchmarks.cirr import CIRRBenchmark
from mmembed.evaluation.benchmarks.retrieval import CaptionRetrievalBenchmark
from mmembed.evaluation.benchmarks.sts import STSBenchmark


@pytest.fixture(scope="module")
def tiny_embedder(tiny_smol_llava_dir):
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder
    from mmembed.models.prompts import PromptConfig

    return MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir)), PromptConfig()).eval()


@pytest.mark.slow  # ~35 s on a shared 2-core CPU (25 image passes)
def test_tiny_model_cirr_i2i_and_sts(tiny_embedder, data_root, tmp_path):
    from mmembed.evaluation.suite import evaluate_suite

    sts = tmp_path / "sts"
    sts.mkdir()
    (sts / "STS.input.toy.txt").write_text("A man plays.\tA man is playing.\nA cat.\tStocks fell.\nRain.\tIt rains.\n")
    (sts / "STS.gs.toy.txt").write_text("4.5\n0.2\n4.0\n")
    cirr = data_root / "cirr"
    benchmarks = [
        STSBenchmark(name="toy_sts", format="sts12_16", path=str(sts)),
        CIRRBenchmark(name="cirr_local", root=str(cirr), gallery="available",
                      captions_file=str(cirr / "cap.rc2.val.local_subset12.json"),
                      image_dir=str(cirr / "images_dev_subset")),
        CaptionRetrievalBenchmark(name="coco_i2i", format="coco_json", max_images=3, i2i=True, render={"font_size": 32},
                                  captions=str(data_root / "coco/captions_train2017_subset80.json"),
                                  images=str(data_root / "coco/train2017")),
    ]
    res = evaluate_suite(tiny_embedder, benchmarks, tmp_path / "out", batch_size=16, model="tiny", progress=False)
    s = res["benchmarks"]["toy_sts"]
    assert s["protocol"]["pairs"] == 3
    assert s["metrics"]["spearman"] == pytest.approx(_brute_force_spearman(
        tiny_embedder, ["A man plays.", "A cat.", "Rain."], ["A man is playing.", "Stocks fell.", "It rains."],
        [4.5, 0.2, 4.0]), abs=1e-6)
    rendered = s["protocol"]["prompts"]["text"]["rendered_example"]
    assert "A man plays.\nSummary above sentence in one word: " in rendered and "<|im_start|>user" in rendered
    c = res["benchmarks"]["cirr_local"]
    assert c["protocol"]["queries"] == 12 and c["protocol"]["candidates"] == 13
    assert set(c["metrics"]) == {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3", "Avg"}
    # 12 candidates are left per query (13 images minus the reference): a recall at 50 of anything else
    # would mean a query lost its target
    assert c["metrics"]["R@50"] == 100.0 and c["metrics"]["R@1"] <= c["metrics"]["R@5"] <= c["metrics"]["R@10"]
    assert c["protocol"]["chance"]["R@1"] == pytest.approx(100 / 12, abs=1e-3)
    r = res["benchmarks"]["coco_i2i"]
    assert r["protocol"]["images"] == 3 and r["protocol"]["captions"] == 15 and "text" not in r["protocol"]["prompts"]
    saved = json.loads((tmp_path / "out/results.json").read_text())
    assert saved["benchmarks"].keys() == res["benchmarks"].keys()


def test_tiny_model_text_only_sts(tiny_embedder, tmp_path):
    """Fast: real tokenizer + chat template + pooling on a 3-pair STS file."""
    from mmembed.evaluation.suite import evaluate_suite

    (tmp_path / "sts-test.csv").write_text(
        "g\tf\t2012\t1\t4.5\tA man plays.\tA man is playing.\n"
        "g\tf\t2012\t2\t0.2\tA cat.\tStocks fell.\tx\ty\n"
        "g\tf\t2012\t3\t4.0\tRain.\tIt rains.\n"
    )
    res = evaluate_suite(tiny_embedder, [STSBenchmark(name="b", format="stsb", path=str(tmp_path))],
                         tmp_path / "out", model="tiny", progress=False)
    entry = res["benchmarks"]["b"]
    assert entry["protocol"]["pairs"] == 3
    assert entry["metrics"]["spearman"] == pytest.approx(_brute_force_spearman(
        tiny_embedder, ["A man plays.", "A cat.", "Rain."], ["A man is playing.", "Stocks fell.", "It rains."],
        [4.5, 0.2, 4.0]), abs=1e-6)
    assert "<|im_start|>user\nA man plays.\nSummary above sentence in one word: " in (
        entry["protocol"]["prompts"]["text"]["rendered_example"]
    )


@pytest.mark.slow
def test_tiny_model_real_sts12(tiny_embedder, data_root, tmp_path):
    from mmembed.evaluation.suite import evaluate_suite

    cfg = STSBenchmark(name="sts12", format="sts12_16", path=str(data_root / "sts/senteval_processed/STS12-en-test"))
    res = evaluate_suite(tiny_embedder, [cfg], tmp_path, batch_size=64, model="tiny", progress=False)
    sts = res["benchmarks"]["sts12"]
    assert sts["protocol"]["pairs"] == 3108
    from mmembed.data.evalsets.sts import read_sts12_16

    subsets = read_sts12_16(cfg.path)  # "all": one Spearman over every subset's pairs
    first, second, gold = ([x for pairs in subsets for x in getattr(pairs, field)]
                           for field in ("sentences1", "sentences2", "scores"))
    in_suite_order = [s for pairs in subsets for s in pairs.sentences1 + pairs.sentences2]
    assert sts["metrics"]["spearman"] == pytest.approx(
        _brute_force_spearman(tiny_embedder, first, second, gold, in_suite_order), abs=1e-4)
    subsets = {"MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"}
    assert set(sts["metrics"]) == {"spearman"} | subsets


def _brute_force_spearman(embedder, first, second, gold, encode_order=None) -> float:
    """Spearman x 100 of the cosine similarities, computed here with scipy over every pair.

    The vectors come from the same batched encoder as the suite's (its length-sorted batches pad
    differently from a plain in-order loop, and on this random tiny model, whose cosines cluster
    tightly, fp32 padding noise alone moves the Spearman by ~0.002). `encode_order` gives the texts in
    the order the suite sends them, so the batches match; what is checked here is the pooling over
    sub-files and the rank correlation.
    """
    import torch
    from scipy.stats import spearmanr

    from mmembed.evaluation.encode import encode_texts

    order = list(encode_order or list(first) + list(second))
    emb = encode_texts(embedder, order, 64, progress=False).double()
    row = {text: emb[i] for i, text in enumerate(order)}
    a, b = torch.stack([row[t] for t in first]), torch.stack([row[t] for t in second])
    # Normalise first, as cosine is usually written: this random model gives many pairs the same
    # cosine, and a/|a|.b/|b| vs a.b/(|a||b|) round such ties apart at 1e-16, which moves Spearman.
    cos = (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)
    return 100 * spearmanr(cos.numpy(), list(gold)).statistic
