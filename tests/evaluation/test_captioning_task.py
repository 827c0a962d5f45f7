"""CaptioningBenchmark in a suite: the tiny MM-GEM model captions the first Flickr8k test images, and the
suite's scores equal pycocoevalcap's on the same captions and the images' five references."""

from __future__ import annotations

import pytest

from mmembed.data.evalsets.captions import read_caption_config
from mmembed.data.images import load_image
from mmembed.evaluation.benchmarks.captioning import CaptioningBenchmark
from mmembed.evaluation.suite import evaluate_suite
from mmembed.inference import Embedder
from mmembed.inference.captioner import Captioner
from mmembed.metrics.captioning import caption_scores
from mmembed.models.factory import ModelSpec, build_embedder
from mmembed.models.mmgem.extension import MMGEMExtension
from mmembed.models.prompts import PromptConfig


def _flickr8k_test(data_root, max_images: int) -> dict:
    text = data_root / "flickr8k_224" / "text"
    return {"format": "flickr8k_token", "captions": str(text / "Flickr8k.token.txt"),
            "images": [str(data_root / "flickr8k_224" / "images"), str(data_root / "flickr8k" / "images")],
            "split": "test", "max_images": max_images,
            "split_files": {s: str(text / f"Flickr_8k.{s}Images.txt") for s in ("train", "dev", "test")}}


def test_captioning_benchmark_scores_the_models_own_captions(tiny_smol_llava_dir, data_root, tmp_path):
    prompts = PromptConfig(text="<sent>", image="<image>", chat_template=False, suffix="[EMB]")
    embedder = build_embedder(ModelSpec(name_or_path=str(tiny_smol_llava_dir), prompts=prompts,
                                        extension=MMGEMExtension())).eval()
    bench = CaptioningBenchmark(name="f8k_captions", **_flickr8k_test(data_root, 4), instruction="<image>",
                                max_new_tokens=5, scoring_tokenizer="simple", java_scorers=False)
    # the suite is handed the inference Embedder, as after training; the captioner reaches its model
    res = evaluate_suite(Embedder(embedder), [bench], tmp_path, batch_size=4, progress=False)
    entry = res["benchmarks"]["f8k_captions"]

    data = read_caption_config(_flickr8k_test(data_root, 4))
    captions = Captioner(embedder, "<image>", max_new_tokens=5).caption([load_image(p) for p in data.images])
    references = {image_id: [] for image_id in data.image_ids}
    for text, image in zip(data.captions, data.caption_image):
        references[data.image_ids[image]].append(text)
    expected = caption_scores(dict(zip(data.image_ids, captions)), references, tokenizer="simple", java_scorers=False)
    assert entry["protocol"]["images"] == 4 and entry["protocol"]["references"] == 20
    assert entry["protocol"]["decoding"] == "greedy"
    assert list(entry["protocol"]["examples"].values()) == captions
    assert set(entry["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
    for key, value in entry["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-9)
