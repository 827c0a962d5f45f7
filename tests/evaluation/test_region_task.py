"""Flickr30k Entities regions (RegionGroundingBenchmark): boxes normalised by the original size onto a copy of another
size, tiny / degenerate / outside / scene boxes skipped and counted, and phrase -> region R@1 against a
brute-force argmax over the image's own boxes, with RoI region vectors (model=mmgem) and with crops."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.data.evalsets.regions import read_region_config
from mmembed.evaluation.benchmarks.regions import RegionGroundingBenchmark
from mmembed.evaluation.suite import evaluate_suite
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.mmgem.extension import MMGEMExtension
from mmembed.models.prompts import PromptConfig

PROMPTS = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")


def _phrase(chain, text, kind="people"):
    return {"chain": chain, "types": [kind], "phrase": text, "char_span": [0, len(text)]}


@pytest.fixture()
def region_layout(tmp_path):
    """Two 'test' images copied at 60 x 40 px whose annotations were made on 300 x 200 originals."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / name)
    (tmp_path / "token.txt").write_text("".join(f"{n}#{i}\tcaption {i} of {n}\n" for n in ("a.jpg", "b.jpg", "c.jpg")
                                                for i in range(2)))
    for split, names in (("train", ["c.jpg"]), ("dev", []), ("test", ["a.jpg", "b.jpg"])):
        (tmp_path / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    entries = [
        {"flickr8k_file": "a.jpg", "orig_width": 300, "orig_height": 200, "scene_chains": [],
         "boxes_xyxy_orig": {"1": [[0, 0, 150, 100]], "2": [[150, 100, 300, 200], [200, 0, 300, 60]],
                             "3": [[10, 10, 20, 20]],            # 2 x 2 px in the copy: tiny
                             "4": [[50, 50, 50, 90]],            # no width: degenerate
                             "5": [[400, 10, 500, 90]],          # right of the image: outside
                             "6": [[-50, 100, 100, 260]],        # partly outside: clipped to (0, 20, 20, 40)
                             "7": [[0, 0, 300, 200]], "0": [[0, 0, 10, 10]]},
         "captions": [{"caption": "x", "phrases": [_phrase("1", "a man"), _phrase("2", "two dogs", "animals"),
                                                   _phrase("3", "a cup"), _phrase("4", "a pole"),
                                                   _phrase("5", "a bird"), _phrase("6", "a child")]},
                      {"caption": "y", "phrases": [_phrase("1", "a guy"), _phrase("7", "a park", "scene")]}]},
        {"flickr8k_file": "b.jpg", "orig_width": 300, "orig_height": 200, "scene_chains": [],
         "boxes_xyxy_orig": {"1": [[0, 0, 150, 100]]},  # one chain only: no choice to make, dropped
         "captions": [{"caption": "z", "phrases": [_phrase("1", "a woman")]}]},
    ]
    with gzip.open(tmp_path / "entities.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)
    return {"name": "toy_regions", "format": "flickr8k_token", "captions": str(tmp_path / "token.txt"),
            "images": str(images), "split": "test", "entities": str(tmp_path / "entities.jsonl.gz"), "min_side": 4,
            "split_files": {s: str(tmp_path / f"{s}.txt") for s in ("train", "dev", "test")}}


def test_boxes_are_scaled_to_the_copy_clipped_and_the_rest_counted(region_layout):
    bench = read_region_config(region_layout)
    assert [p.name for p in bench.images] == ["a.jpg"]  # b.jpg: a single chain; c.jpg: a train image
    assert [(r.chain, r.box) for r in bench.regions] == [
        ("1", (0.0, 0.0, 30.0, 20.0)), ("2", (30.0, 20.0, 60.0, 40.0)), ("2", (40.0, 0.0, 60.0, 12.0)),
        ("6", (0.0, 20.0, 20.0, 40.0))]
    assert bench.counts == {"boxes": 10, "tiny": 1, "degenerate": 1, "outside": 1, "scene": 1, "no_phrase": 1,
                            "images_with_fewer_than_2_chains": 1, "regions_kept": 4, "images_kept": 1}
    assert bench.queries() == [(0, "1", "a man"), (0, "2", "two dogs"), (0, "6", "a child")]
    assert bench.phrases[(0, "1")] == ["a man", "a guy"]


def _brute_force_r1(bench, phrase_vectors, region_vectors) -> float:
    hits = 0
    for q, (image, chain, _) in enumerate(bench.queries()):
        best = max((k for k, r in enumerate(bench.regions) if r.image == image),
                   key=lambda k: float(region_vectors[k] @ phrase_vectors[q]))
        hits += bench.regions[best].chain == chain
    return 100.0 * hits / len(bench.queries())


@pytest.mark.parametrize("mmgem", [True, False], ids=["roi", "crop"])
def test_phrase_to_region_r1_equals_a_brute_force_argmax(region_layout, tiny_smol_llava_dir, tmp_path, mmgem):
    from mmembed.data.images import load_image

    spec = ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=PROMPTS,
                     extension=MMGEMExtension() if mmgem else None)
    embedder = build_embedder(spec).eval()
    if mmgem:  # and region captions of the first two query chains' first boxes
        region_layout = {**region_layout, "caption_regions": 2, "max_new_tokens": 4, "scoring_tokenizer": "simple"}
    result = evaluate_suite(embedder, [RegionGroundingBenchmark(**region_layout)], tmp_path / "out", batch_size=3,
                            progress=False)
    entry = result["benchmarks"]["toy_regions"]
    bench = read_region_config(region_layout)
    image = load_image(bench.images[0])
    with torch.no_grad():
        phrases = embedder.encode_text([p for _, _, p in bench.queries()])
        if mmgem:
            regions = embedder.embed_regions([image] * 4, [r.box for r in bench.regions])
        else:
            regions = embedder.encode_image([image.crop(tuple(round(v) for v in r.box)) for r in bench.regions])
    assert entry["protocol"]["region_embedding"] == ("roi" if mmgem else "crop")
    assert entry["metrics"]["phrase2region_R@1"] == pytest.approx(_brute_force_r1(bench, phrases, regions), abs=1e-4)  # 4 decimals
    # chance: chain 1 has 1 of 4 boxes, chain 2 has 2, chain 6 has 1
    if mmgem:
        from mmembed.inference.captioner import Captioner

        expected = Captioner(embedder, "<image>", max_new_tokens=4).caption([image] * 2, boxes=[r.box for r in bench.regions[:2]])
        assert entry["protocol"]["region_captions"]["examples"] == {"a.jpg#1": expected[0], "a.jpg#2": expected[1]}
        assert {"region_BLEU-4", "region_CIDEr"} <= set(entry["metrics"])
    assert entry["metrics"]["chance_R@1"] == pytest.approx(100 * (1 / 4 + 2 / 4 + 1 / 4) / 3, abs=1e-4)
