"""MMEBBenchmark through evaluate_suite: each distinct input embedded once, hit@1 of planted embeddings, the
protocol, and the real embedding path (tiny SmolLlava) against a brute-force per-query reference."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.evaluation.benchmarks.mmeb import MMEBBenchmark
from mmembed.evaluation.suite import check_benchmarks, evaluate_suite
from mmembed.models.prompts import PromptConfig, PromptRenderer

DIM = 8


def _e(i: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), DIM).float()


class PlantedEmbedder:
    """Vectors chosen per input: texts from `texts`, images by their red value from `images`, composed inputs
    from `composed[(red, text)]`. Every call is logged."""

    def __init__(self, texts, images, composed):
        self.renderer = PromptRenderer(PromptConfig(chat_template=False), tokenizer=None)
        self.texts, self.images, self.composed = texts, images, composed
        self.calls = {"text": [], "image": [], "composed": []}

    def encode_text(self, texts):
        self.calls["text"] += list(texts)
        return torch.stack([self.texts[t] for t in texts])

    def encode_image(self, images, kind="image", category=None):
        reds = [img.getpixel((0, 0))[0] for img in images]
        self.calls["image"] += [(r, kind) for r in reds]
        return torch.stack([self.images[r] for r in reds])

    def encode_composed(self, images, texts, kind="cir_query", category=None):
        pairs = [(img.getpixel((0, 0))[0], t) for img, t in zip(images, texts)]
        self.calls["composed"] += [(r, t, kind) for r, t in pairs]
        return torch.stack([self.composed.get((r, t), _e(7)) for r, t in pairs])


def _write(root: Path, name: str, rows, meta=None) -> None:
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if meta:
        (root / "eval" / f"{name}.meta.json").write_text(json.dumps(meta))


def _toy(root: Path) -> None:
    for red in range(7):
        Image.new("RGB", (8, 8), (red, 0, 0)).save(root / f"r{red}.png")
    (root / "broken.png").write_bytes(b"not an image")
    tgt = "<|image_1|> img"
    t2i = [{"qry_text": f"find red {k}", "qry_img_path": "", "tgt_text": [tgt] * 3,
            "tgt_img_path": [f"r{k}.png"] + [f"r{j}.png" for j in (1, 2, 3) if j != k]} for k in (1, 2, 3)]
    _write(root, "Toy_t2i", t2i, {"meta_task": "retrieval", "distribution": "IND"})
    cls = [{"qry_text": "<|image_1|>", "qry_img_path": f"r{r}.png", "tgt_text": gold_first, "tgt_img_path": ["", ""]}
           for r, gold_first in ((4, ["four", "five"]), (5, ["five", "four"]), (0, ["four", "five"]),
                                 (6, ["five", "four"]))]
    cls.append({"qry_text": "<|image_1|>", "qry_img_path": "broken.png", "tgt_text": ["four", "five"],
                "tgt_img_path": ["", ""]})
    _write(root, "Toy_cls", cls, {"meta_task": "classification", "distribution": "OOD"})


def _planted() -> PlantedEmbedder:
    texts = {"find red 1": _e(1), "find red 2": _e(2), "find red 3": _e(1), "four": _e(4), "five": _e(5)}
    # t2i: image k's target embeds as e_k, so "find red 3" (planted as e_1) is the one miss
    composed = {(k, "<image> img"): _e(k) for k in (1, 2, 3)}
    # cls: 4 -> "four" (hit); 5 ties "five"/"four" with "five" the gold (a hit); 0 -> "five", gold "four" (miss);
    # 6 -> "five", gold "five" (hit): 3 of 4
    images = {4: _e(4), 5: F.normalize(_e(4) + _e(5), dim=0), 0: _e(5), 6: _e(5)}
    return PlantedEmbedder(texts, images, composed)


def test_planted_embeddings_give_the_known_hits_and_each_input_is_embedded_once(tmp_path):
    _toy(tmp_path)
    fake = _planted()
    cfg = MMEBBenchmark(name="mm", root=str(tmp_path / "eval"), image_root=str(tmp_path))
    res = evaluate_suite(fake, [cfg], tmp_path / "out", progress=False)
    entry = res["benchmarks"]["mm"]
    assert entry["metrics"] == {"Toy_cls": 75.0, "Toy_t2i": 66.6667, "classification": 75.0, "retrieval": 66.6667,
                                "IND": 66.6667, "OOD": 75.0, "overall": 70.8333}
    assert sorted(fake.calls["text"]) == ["find red 1", "find red 2", "find red 3", "five", "four"]
    # broken.png is read once, fails and is skipped with its query
    assert sorted(fake.calls["image"]) == [(0, "image"), (4, "image"), (5, "image"), (6, "image")]
    assert sorted(fake.calls["composed"]) == [(k, "<image> img", "text") for k in (1, 2, 3)]
    p = entry["protocol"]
    assert p["inputs_in_rows"] == 3 * 4 + 5 * 3
    assert p["unique_inputs_embedded"] == {"total": 13, "text": 5, "image": 5, "image+text": 3}
    assert p["unreadable_inputs_skipped"] == 1
    cls = p["datasets"]["Toy_cls"]
    assert cls["queries"] == 4 and cls["queries_dropped_unreadable_image"] == 1 and cls["rows_in_file"] == 5
    assert p["datasets"]["Toy_t2i"]["candidates_per_query"] == [3, 3]
    assert p["chance"]["Toy_cls"] == 50.0 and p["chance"]["overall"] == pytest.approx((50 + 100 / 3) / 2, abs=1e-4)
    assert p["average_members"]["overall"] == ["Toy_cls", "Toy_t2i"]
    prompts = p["prompts"]
    assert prompts["Toy_t2i"]["query"]["rendered_example"] == "find red 1\nSummary above sentence in one word: "
    assert prompts["Toy_t2i"]["gold_target"]["rendered_example"] == "<image> img\nSummary above sentence in one word: "
    assert prompts["Toy_cls"]["query"]["rendered_example"] == "<image>\nSummary above image in one word: "
    assert "Toy_t2i" in (tmp_path / "out/results.md").read_text()


def test_a_kind_that_places_the_image_itself_gets_the_text_without_placeholder(tmp_path):
    _toy(tmp_path)
    fake = _planted()
    cfg = MMEBBenchmark(name="mm", root=str(tmp_path / "eval"), image_root=str(tmp_path), datasets=["Toy_t2i"],
                        image_text_kind="cir_query")
    res = evaluate_suite(fake, [cfg], tmp_path / "out", progress=False)
    assert sorted(fake.calls["composed"]) == [(k, "img", "cir_query") for k in (1, 2, 3)]
    assert res["benchmarks"]["mm"]["protocol"]["prompts"]["Toy_t2i"]["gold_target"]["rendered_example"] == (
        '<image>Modify this image with "img", desribe modified image in one word:')


def test_unknown_dataset_without_metadata_fails_before_any_model(tmp_path):
    from mmembed.errors import ConfigError, DataConfigError

    _write(tmp_path, "Mine", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]}])
    cfg = MMEBBenchmark(name="mm", root=str(tmp_path / "eval"))
    with pytest.raises(DataConfigError, match=r"'Mine' is not one of MMEB-V1's 36"):
        check_benchmarks([cfg])
    known = replace(cfg, dataset_info={"Mine": {"meta_task": "vqa", "distribution": "OOD"}})
    check_benchmarks([known])
    with pytest.raises(ConfigError, match=r"image_text_kind='caption' is not a prompt kind"):
        check_benchmarks([replace(known, image_text_kind="caption")])


# ---- the real embedding path ----
class Counting:
    """The embedder interface of a real MLLMEmbedder, recording what each call embeds."""

    def __init__(self, inner):
        self.inner, self.renderer, self.items = inner, inner.renderer, []

    def encode_text(self, texts):
        self.items += [("text", t) for t in texts]
        return self.inner.encode_text(texts)

    def encode_image(self, images, kind="image", category=None):
        self.items += [("image", img.tobytes()[:64], kind) for img in images]
        return self.inner.encode_image(images, kind=kind, category=category)

    def encode_composed(self, images, texts, kind="cir_query", category=None):
        self.items += [("composed", img.tobytes()[:64], t, kind) for img, t in zip(images, texts)]
        return self.inner.encode_composed(images, texts, kind=kind, category=category)


def _embed_one(embedder, inp, image_root: Path) -> torch.Tensor:
    """One input alone, by the rule the task documents (text / bare image / image + text)."""
    if inp["img"] is None:
        return embedder.encode_text([inp["text"]])[0]
    image = Image.open(image_root / inp["img"]).convert("RGB")
    if inp["text"].replace("<image>", "").strip() == "":
        return embedder.encode_image([image])[0]
    return embedder.encode_composed([image], [inp["text"]], kind="text")[0]


@pytest.mark.slow  # ~60 s: two dozen forward passes of the tiny model, three times (task, brute force, fast path)
def test_tiny_model_hits_match_a_brute_force_per_query_reference(tiny_smol_llava_dir, tmp_path):
    from mmembed.data.evalsets.mmeb import as_input
    from mmembed.models.backbones import load_backbone
    from mmembed.models.embedder import MLLMEmbedder

    gen = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).resize((64, 64)).save(tmp_path / f"n{i}.png")
    names = ["dog", "cat", "a red car"]  # each image's gold is another class: the hits differ per row
    rows = [  # V2-style rows: instruction columns; the same image reused across rows and datasets
        {"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
         "qry_img_path": f"n{i}.png", "tgt_inst": "", "tgt_text": names[i:] + names[:i], "tgt_img_path": ["", "", ""]}
        for i in range(3)
    ]
    _write(tmp_path, "ImageNet-1K", rows)
    t2i = [{"qry_inst": "Find me an everyday image that matches the given caption:", "qry_text": cap,
            "qry_img_path": "", "tgt_inst": "<|image_1|> Represent the given image.", "tgt_text": ["", "", ""],
            "tgt_img_path": [f"n{g}.png"] + [f"n{j}.png" for j in range(4) if j != g][:2]}
           for g, cap in ((0, "a dog"), (1, "a cat"), (3, "a red car"))]
    t2i.append({"qry_inst": "", "qry_text": "", "qry_img_path": "n2.png",  # a bare image query, image candidates
                "tgt_inst": "", "tgt_text": ["", ""], "tgt_img_path": ["n2.png", "n1.png"]})
    _write(tmp_path, "MSCOCO_t2i", t2i)
    inner = MLLMEmbedder(load_backbone(str(tiny_smol_llava_dir)), PromptConfig()).eval()
    counting = Counting(inner)
    cfg = MMEBBenchmark(name="mm", root=str(tmp_path / "eval"), image_root=str(tmp_path))
    res = evaluate_suite(counting, [cfg], tmp_path / "out", batch_size=4, progress=False)
    assert len(counting.items) == len(set(counting.items))  # nothing embedded twice
    p = res["benchmarks"]["mm"]["protocol"]
    # distinct inputs: 3 class names + 3 captions with their instruction; 3 image queries with theirs + the 4
    # target images with theirs; the bare n2.png (a query and, unchanged, its own gold target) and n1.png
    assert p["unique_inputs_embedded"] == {"total": 15, "text": 6, "image+text": 7, "image": 2}
    assert len(counting.items) == 15
    rendered = p["prompts"]["ImageNet-1K"]["query"]["rendered_example"]
    assert "<image> Represent the given image for classification\nSummary above sentence in one word: " in rendered
    assert "<|im_start|>user" in rendered
    expected = {}
    with torch.inference_mode():
        for name, file_rows in (("ImageNet-1K", rows), ("MSCOCO_t2i", t2i)):
            hits = []
            for r in file_rows:
                def one(inst, text, img):
                    x = as_input(inst, text, img, Path("."), "test")
                    return _embed_one(inner, {"text": x.text, "img": None if x.image is None else str(x.image)},
                                      tmp_path)

                q = F.normalize(one(r["qry_inst"], r["qry_text"], r["qry_img_path"]), dim=0)
                cands = F.normalize(torch.stack([one(r["tgt_inst"], t, i) for t, i in zip(r["tgt_text"],
                                                                                        r["tgt_img_path"])]), dim=-1)
                scores = cands @ q
                hits.append(bool(scores[0] >= scores[1:].max()))
            expected[name] = round(100 * sum(hits) / len(hits), 4)
    metrics = res["benchmarks"]["mm"]["metrics"]
    assert {k: metrics[k] for k in expected} == expected, (metrics, expected)
    assert metrics["overall"] == pytest.approx(sum(expected.values()) / 2, abs=1e-3)
    assert metrics["classification"] == expected["ImageNet-1K"] and metrics["retrieval"] == expected["MSCOCO_t2i"]
    # src/eval.py's fast path (length-sorted batches, shared-prefix cache) gives the same hits
    from mmembed.inference import Embedder

    fast = evaluate_suite(Embedder(inner), [cfg], tmp_path / "fast", batch_size=4, progress=False)
    assert fast["benchmarks"]["mm"]["metrics"] == metrics


def test_mini_mmeb_suite_names_the_build_command_when_the_folder_is_missing(tmp_path):
    from hydra import compose, initialize_config_dir

    from mmembed.data.evalsets.layout import BenchmarkLayoutError
    from mmembed.run.evaluation import benchmark_list
    from tests.conftest import REPO

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", ["eval=mini_mmeb", f"paths.cache_dir={tmp_path}"])
    (bench,) = benchmark_list(cfg.eval)
    assert isinstance(bench, MMEBBenchmark) and bench.name == "mini_mmeb"
    assert bench.root == str(tmp_path / "mini_mmeb-v1/eval")
    with pytest.raises(BenchmarkLayoutError, match=r"build it with: python experiments/build_mini_mmeb\.py --out "
                                                   + str(tmp_path / "mini_mmeb-v1")):
        check_benchmarks([bench])
