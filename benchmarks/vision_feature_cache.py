"""Step time of a projector-alignment captioning step with and without the vision feature cache.

Both arms train the projector alone (the LLM and tower frozen, the tower in eval mode, as
`experiment=align` does) on the same Flickr8k training images and captions, AdamW on the projector:
- uncached: open the JPEGs, preprocess them (224 px), run the tower, projector + LLM forward/backward;
- cached:   read the tower's feature maps from the cache (filled beforehand, one pass), tokenise the
            prompts with the image placeholders expanded, projector + LLM forward/backward.
Steps alternate between the arms (the CPU is shared: alternation keeps load drift out of the ratio);
the first step of each arm is a warm-up and not counted. The cached inputs are checked to equal the
featurizer's (ids, mask, labels) and the two losses to agree before anything is timed.

    python benchmarks/vision_feature_cache.py --steps 4 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from mmembed.data.benchmarks.captions import read_caption_config
from mmembed.models.backbones import load_backbone, projector_module
from mmembed.models.featurizer import DEFAULT_CAPTION_INSTRUCTION, IGNORE_INDEX, Featurizer
from mmembed.models.prompts import PromptConfig
from mmembed.models.vision_feature_cache import VisionFeatureCache

DATA = Path(os.environ.get("MMEMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def training_pairs(n: int) -> tuple[list[Path], list[str]]:
    """The first n Flickr8k *train*-split images (224 px copies) with their first caption."""
    root = DATA / "flickr8k_224"
    bench = read_caption_config({
        "name": "flickr8k_train", "format": "flickr8k_token", "captions": str(root / "text" / "Flickr8k.token.txt"),
        "images": [str(root / "images")], "split": "train", "max_images": n,
        "split_files": {s: str(root / "text" / f"Flickr_8k.{s}Images.txt") for s in ("train", "dev", "test")},
    })
    first = {}
    for caption, image in zip(bench.captions, bench.caption_image):
        first.setdefault(image, caption)
    return bench.images, [first[i] for i in range(len(bench.images))]


def text_inputs(featurizer: Featurizer, captions: list[str], image_tokens: int) -> dict[str, torch.Tensor]:
    """`Featurizer.caption_inputs` without images: the `<image>` placeholder expanded to the tower's
    token count by hand (what LlavaProcessor does from the pixel shape), labels on the answer tokens."""
    tokenizer = featurizer.tokenizer
    prompt = featurizer.renderer.user_turn(DEFAULT_CAPTION_INSTRUCTION, what="captioning prompts")
    prompt = prompt.replace(featurizer.image_token, featurizer.image_token * image_tokens)
    answers = [c + (tokenizer.eos_token or "") for c in captions]
    inputs = dict(tokenizer([prompt + a for a in answers], return_tensors="pt", padding=True, padding_side="right",
                            add_special_tokens=False))
    lengths = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    for row, (total, answer) in enumerate(zip(inputs["attention_mask"].sum(dim=1).tolist(), lengths)):
        labels[row, total - answer : total] = inputs["input_ids"][row, total - answer : total]
    inputs["labels"] = labels
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm (after one warm-up each)")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    args = parser.parse_args()

    backbone = load_backbone(args.model)
    model, image_processor = backbone.model, backbone.processor.image_processor
    featurizer = Featurizer(backbone.processor, backbone.tokenizer, backbone.family, backbone.image_token,
                            PromptConfig(system=""))
    model.requires_grad_(False)
    projector = projector_module(model).requires_grad_(True)
    model.train()
    model.model.vision_tower.eval()
    optimizer = torch.optim.AdamW([p for p in projector.parameters() if p.requires_grad], lr=1e-4)
    n = args.batch_size * (args.steps + 1)
    paths, captions = training_pairs(n)
    batches = [(paths[i : i + args.batch_size], captions[i : i + args.batch_size]) for i in range(0, n, args.batch_size)]

    with tempfile.TemporaryDirectory() as tmp:
        cache = VisionFeatureCache.for_model(model, image_processor, args.cache_dir or tmp)
        t0 = time.perf_counter()
        for batch_paths, _ in batches:  # the one-off pass that fills the cache
            cache.vision_features(batch_paths, model, image_processor)
        fill_s = time.perf_counter() - t0

        def uncached(batch_paths, batch_captions):
            images = [Image.open(p).convert("RGB") for p in batch_paths]
            return featurizer.caption_inputs(images, batch_captions)

        def miss(_):
            raise RuntimeError("cache miss: the fill pass should have stored every image")

        def cached(batch_paths, batch_captions):
            features, _ = cache.lookup(batch_paths, miss)
            inputs = text_inputs(featurizer, batch_captions, model.config.image_seq_length)
            return {**inputs, "vision_features": features}

        def step(make_inputs, batch):
            """(seconds making the inputs, seconds of forward + backward + optimizer step)"""
            start = time.perf_counter()
            inputs = make_inputs(*batch)
            made = time.perf_counter()
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return made - start, time.perf_counter() - made

        # Same inputs and loss both ways before anything is timed.
        reference = uncached(*batches[0])
        shortcut = cached(*batches[0])
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(reference[key], shortcut[key]), key
        with torch.no_grad():
            a = float(model(**reference).loss)
            b = float(model(**shortcut).loss)
        assert abs(a - b) < 1e-5, (a, b)

        arms = [("uncached", uncached), ("cached", cached)]
        parts = {arm: [] for arm, _ in arms}
        for i, batch in enumerate(batches):
            for arm, make in arms if i % 2 == 0 else arms[::-1]:
                timing = step(make, batch)
                if i > 0:  # step 0 is each arm's warm-up
                    parts[arm].append(timing)
    times = {arm: [sum(t) for t in ts] for arm, ts in parts.items()}
    median = {arm: statistics.median(t) for arm, t in times.items()}
    print(json.dumps({
        "model": backbone.name_or_path, "batch_size": args.batch_size, "timed_steps_per_arm": args.steps,
        "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "cache_fill_s": round(fill_s, 2), "check_losses": [round(a, 6), round(b, 6)],
        "sec_per_step": {arm: [round(t, 2) for t in ts] for arm, ts in times.items()},
        "median_sec_per_step": {arm: round(t, 2) for arm, t in median.items()},
        "median_sec_making_inputs": {arm: round(statistics.median(t[0] for t in ts), 3) for arm, ts in parts.items()},
        "median_sec_forward_backward": {arm: round(statistics.median(t[1] for t in ts), 2) for arm, ts in parts.items()},
        "cached_over_uncached": round(median["cached"] / median["uncached"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
