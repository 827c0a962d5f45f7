"""CIRR, FashionIQ and zero-shot tasks through evaluate_suite with the fake embedder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mmembed.evaluation.benchmarks.cirr import CIRRBenchmark
from mmembed.evaluation.benchmarks.fashioniq import FashionIQBenchmark
from mmembed.evaluation.benchmarks.zeroshot import ZeroShotBenchmark
from mmembed.evaluation.suite import evaluate_suite
from tests.evaluation.fakes import FakeEmbedder


def _img(path, red):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (red, 0, 0)).save(path)


def test_cirr_reference_excluded_each_gallery_image_once(tmp_path):
    root = tmp_path / "cirr"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    names = [f"dev-{i}-img0" for i in range(6)]
    (root / "image_splits/split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    for i, n in enumerate(names):
        _img(root / "dev" / f"{n}.png", i)
    members = names[:4]
    caps = [
        # query 0's embedding is exactly its reference (no '->'): with the reference removed, whatever
        # ranks next decides; query 1 points at its target exactly (noise 0)
        {"pairid": 1, "reference": names[0], "target_hard": names[1], "caption": "keep it",
         "img_set": {"members": members}},
        {"pairid": 2, "reference": names[2], "target_hard": names[3], "caption": "->3",
         "img_set": {"members": members}},
    ]
    (root / "captions/cap.rc2.val.json").write_text(json.dumps(caps))
    fake = FakeEmbedder(noise=0.0)
    res = evaluate_suite(fake, [CIRRBenchmark(name="cirr", root=str(root))], tmp_path / "out",
                         progress=False)
    assert sorted(r for r, kind, _ in fake.calls["image"]) == list(range(6))
    assert {kind for _, kind, _ in fake.calls["image"]} == {"cir_target"}
    m, p = res["benchmarks"]["cirr"]["metrics"], res["benchmarks"]["cirr"]["protocol"]
    assert m["R@50"] == 100.0 and m["Rsubset@3"] == 100.0
    assert m["R@1"] in (50.0, 100.0)  # query 1 is always a hit at 1; never 0 as the reference is gone
    assert p["queries"] == 2 and p["candidates"] == 6 and p["subset_candidates_per_query"] == [3]
    assert p["prompts"]["cir_query"]["rendered_example"] == (
        '<image>Modify this image with "keep it", desribe modified image in one word:'
    )


def test_fashioniq_category_prompt_and_average(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    names = {"dress": ["D0", "D1", "D2"], "toptee": ["T0", "T1", "T2"]}
    red = 0
    for cat, ns in names.items():
        (tmp_path / f"image_splits/split.{cat}.val.json").write_text(json.dumps(ns))
        for n in ns:
            _img(tmp_path / "images" / f"{n}.png", red)
            red += 1
    (tmp_path / "captions/cap.dress.val.json").write_text(json.dumps(
        [{"candidate": "D0", "target": "D1", "captions": ["->1 shorter.", "red"]}]))
    (tmp_path / "captions/cap.toptee.val.json").write_text(json.dumps(
        [{"candidate": "T0", "target": "T2", "captions": ["->5 ", "blue?"]}]))
    fake = FakeEmbedder(noise=0.0)
    cfg = FashionIQBenchmark(name="fiq", root=str(tmp_path), categories=["dress", "toptee"])
    res = evaluate_suite(fake, [cfg], tmp_path / "out", progress=False)
    m, p = res["benchmarks"]["fiq"]["metrics"], res["benchmarks"]["fiq"]["protocol"]
    assert m["dress_R@10"] == m["toptee_R@50"] == m["avg_R@10"] == 100.0
    assert [t for _, t in fake.calls["composed"]] == ["->1 shorter, red", "->5, blue"]
    assert {c for _, k, c in fake.calls["image"] if k == "fiq_target"} == {"dress", "shirt"}  # toptee -> shirt
    assert "shirt" in p["prompts"]["toptee"]["fiq_target"]["rendered_example"]


def test_zeroshot_hand_computed(tmp_path):
    rows = ["class_index\tclass_name\tfile_name"] + [f"{i}\timg{i}_x\t{i}.png" for i in range(4)]
    (tmp_path / "classes.tsv").write_text("\n".join(rows) + "\n")
    for i in range(4):
        _img(tmp_path / "images" / f"{i}.png", i)
    fake = FakeEmbedder(noise=0.0)  # class text "img<i> x" embeds exactly as image i
    res = evaluate_suite(fake, [ZeroShotBenchmark(name="zs", root=str(tmp_path), template="{}")],
                         tmp_path / "out", progress=False)
    assert res["benchmarks"]["zs"]["metrics"] == {"acc@1": 100.0, "acc@5": 100.0}
    assert fake.calls["text"][0].startswith("img") and "img0 x" in fake.calls["text"]
    assert res["benchmarks"]["zs"]["protocol"]["chance"]["acc@1"] == pytest.approx(25.0)
