"""Region level on Flickr30k Entities (`RegionGroundingBenchmark`): phrase -> region retrieval among each image's
own boxes (R@1, with its chance level) and, for models that caption, region captions scored against the phrases
that name the region (BLEU-1..4, CIDEr x100).

Region vectors: a model with RoI pooling (the "regions" capability, model=mmgem: h1 of the box's RoI-pooled region
vector, `embed_regions`) embeds the box on the whole image; any other model embeds the box cropped out of the
image as an image (`region_embedding: crop`, or `auto` = roi when the model can). Phrases are embedded as texts.
A query is each (image, chain) with a kept box, its phrase the chain's first mention; it hits when the image's
most similar box belongs to its chain (a chain may have several boxes: "two dogs").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from mmembed.data.evalsets.regions import RegionBenchmark, read_region_config
from mmembed.data.images import load_image
from mmembed.errors import ConfigError
from mmembed.evaluation.benchmarks.retrieval import CaptionImages
from mmembed.evaluation.common import floats
from mmembed.evaluation.encode import encode_texts
from mmembed.models.encoder import RegionEncoder, capabilities, unwrap

EMBEDDINGS = ("auto", "roi", "crop")


def region_encoder(embedder) -> RegionEncoder:
    """The embedder itself, or the model-level one it wraps, whichever embeds boxed regions."""
    return embedder if isinstance(embedder, RegionEncoder) else unwrap(embedder)


@torch.inference_mode()
def region_vectors(embedder, bench, how: str, batch_size: int, progress: bool) -> torch.Tensor:
    """[len(bench.regions), D] unit vectors, `roi` (on the whole image) or `crop` (the box as an image)."""
    from tqdm.auto import tqdm

    out, cache = [], {}

    def image(i):
        if i not in cache:
            cache.clear()  # regions come grouped by image: keep one open
            cache[i] = load_image(bench.images[i])
        return cache[i]

    starts = range(0, len(bench.regions), batch_size)
    for start in tqdm(starts, desc=f"{bench.name} regions", unit="batch", disable=not progress):
        batch = bench.regions[start : start + batch_size]
        images = [image(r.image) for r in batch]
        if how == "roi":
            out.append(region_encoder(embedder).embed_regions(images, [r.box for r in batch]).float().cpu())
        else:
            crops = [im.crop(tuple(round(v) for v in r.box)) for im, r in zip(images, batch)]
            out.append(embedder.encode_image(crops, kind="image").float().cpu())
    return torch.cat(out)


def grounding_hits(bench, phrase_emb: torch.Tensor, region_emb: torch.Tensor) -> tuple[list[bool], list[float]]:
    """Per query: did its image's most similar box belong to its chain, and the chance of that at random."""
    by_image: dict[int, list[int]] = {}
    for k, r in enumerate(bench.regions):
        by_image.setdefault(r.image, []).append(k)
    hits, chance = [], []
    for q, (image, chain, _) in enumerate(bench.queries()):
        candidates = by_image[image]
        scores = region_emb[candidates] @ phrase_emb[q]
        best = candidates[int(scores.argmax())]
        hits.append(bench.regions[best].chain == chain)
        chance.append(sum(bench.regions[k].chain == chain for k in candidates) / len(candidates))
    return hits, chance


@dataclass(kw_only=True)
class RegionGroundingBenchmark(CaptionImages):
    """The caption-file settings of the images plus `entities` (flickr8k_entities.jsonl.gz) and `min_side` (boxes
    under it are skipped); `caption_regions`: caption the first box of the first N query chains (0 = off), with
    `instruction`, `max_new_tokens`, `num_beams`, `scoring_tokenizer`, `java_scorers`."""

    entities: str
    min_side: float = 8
    region_embedding: str = "auto"
    caption_regions: int = 0
    instruction: str = "<image>"
    max_new_tokens: int = 12
    num_beams: int = 1
    scoring_tokenizer: str = "auto"
    java_scorers: bool = False
    task = "regions"
    needs = frozenset({"text", "image"})

    def check(self) -> RegionBenchmark:
        self.region_vectors_how()  # a setting mistake is reported before any file is read or model loaded
        return read_region_config({**self.caption_settings(), "entities": self.entities, "min_side": self.min_side})

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        bench = self.check()
        how = self.region_vectors_how()
        if how == "auto":
            how = "roi" if "regions" in capabilities(embedder) else "crop"
        queries = bench.queries()
        phrase_emb = encode_texts(embedder, [p for _, _, p in queries], batch_size, desc=f"{bench.name} phrases",
                                  progress=progress).float()
        region_emb = region_vectors(embedder, bench, how, batch_size, progress)
        hits, chance = grounding_hits(bench, phrase_emb, region_emb)
        metrics = {"phrase2region_R@1": 100.0 * sum(hits) / len(hits),
                   "chance_R@1": 100.0 * sum(chance) / len(chance)}
        per_image = Counter(r.image for r in bench.regions)
        protocol = {
            "task": "regions", "images": len(bench.images), "regions": len(bench.regions), "queries": len(queries),
            "regions_per_image": round(len(bench.regions) / max(len(bench.images), 1), 2),
            "max_regions_per_image": max(per_image.values(), default=0), "region_embedding": how,
            "boxes": bench.counts, "query": "the chain's first phrase; hit if the top box is one of the chain's boxes",
        }
        if self.caption_regions:
            metrics.update(self._region_captions(embedder, bench, int(self.caption_regions), batch_size, progress,
                                                 protocol))
        return {"metrics": floats(metrics), "protocol": protocol}

    def region_vectors_how(self) -> str:
        """`region_embedding` checked: one of EMBEDDINGS (unset means auto)."""
        how = self.region_embedding or "auto"
        if how not in EMBEDDINGS:
            raise ConfigError(f"benchmark {self.name!r}: region_embedding={how!r} is not one of {EMBEDDINGS} "
                              "(auto: roi when the model has RoI pooling, else crop)")
        return how

    def _region_captions(self, embedder, bench, limit: int, batch_size: int, progress: bool, protocol: dict) -> dict:
        """Captions of the first box of the first `limit` queries' chains, scored against all that chain's phrases."""
        from mmembed.inference.captioner import Captioner
        from mmembed.metrics.captioning import caption_scores

        first_box = {}
        for r in bench.regions:
            first_box.setdefault((r.image, r.chain), r)
        picked = [first_box[(image, chain)] for image, chain, _ in bench.queries()[:limit]]
        captioner = Captioner(unwrap(embedder), self.instruction or "<image>", int(self.max_new_tokens or 12),
                              int(self.num_beams or 1))
        captions = captioner.caption([load_image(bench.images[r.image]) for r in picked], batch_size=batch_size,
                                     progress=progress, boxes=[r.box for r in picked])
        keys = [f"{bench.image_ids[r.image]}#{r.chain}" for r in picked]
        references = {k: bench.phrases[(r.image, r.chain)] for k, r in zip(keys, picked)}
        scores = caption_scores(dict(zip(keys, captions)), references, tokenizer=self.scoring_tokenizer or "auto",
                                java_scorers=bool(self.java_scorers))
        protocol["region_captions"] = {"regions": len(picked), "references": "every phrase of the region's chain",
                                       "examples": dict(list(zip(keys, captions))[:5]),
                                       "scoring": {k: v for k, v in scores.items() if not isinstance(v, (int, float))}}
        return {f"region_{k}": v for k, v in scores.items() if isinstance(v, (int, float)) and k != "num_images"}
