"""Image-text retrieval (`CaptionRetrievalBenchmark`): text->image and image->text Recall@1/5/10 over a caption
file's images (a query hits if any positive is in the top k)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from mmembed.data.evalsets.captions import CaptionBenchmark, read_caption_config
from mmembed.errors import ConfigError
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.common import chance_recall, floats, prompt_record
from mmembed.evaluation.encode import encode_images, encode_rendered_texts, encode_texts
from mmembed.evaluation.validation import ValidationPlan, image_item, table, text_item
from mmembed.metrics.retrieval import ImageTextRecall

KS = (1, 5, 10)


@dataclass(kw_only=True)
class CaptionImages(Benchmark):
    """The caption-file settings of data.evalsets.captions.read_caption_config: `format` (caption_csv /
    flickr8k_token / coco_json / karpathy / caption_json), `captions`, `images` (a folder or folders searched in
    order), `image_names` (a CSV: name in the caption file -> file on disk), `missing_images` (raise / drop), the
    split (`split` + `split_files` or `split_file`, `heldout_splits`), `max_images`, `image_range` and
    `join_captions` (each image's captions joined into one long text), `captions_per_image` (each image's first k
    captions; null: all)."""

    format: str
    captions: str
    images: str | list[str]
    split: str | None = None
    split_files: dict[str, str] | None = None
    split_file: str | None = None
    image_names: str | None = None
    missing_images: str = "raise"
    heldout_splits: list[str] = field(default_factory=list)
    max_images: int | None = None
    image_range: list[int] | None = None
    join_captions: bool = False
    captions_per_image: int | None = None
    on_error: str = "skip"

    def caption_settings(self) -> dict:
        return dict(self.settings("format", "captions", "images", "image_names", "missing_images", "split", "split_files", "split_file",
                                  "heldout_splits", "max_images", "image_range", "join_captions",
                                  "captions_per_image"))

    def check(self) -> CaptionBenchmark:
        return read_caption_config(self.caption_settings())


@dataclass(kw_only=True)
class CaptionRetrievalBenchmark(CaptionImages):
    """`i2i`: embed every caption as a rendered 800x400 image instead of as text (E5-V's I2I setting), drawn with
    `render` (mmembed.evaluation.text_images.render_text_image's settings)."""

    i2i: bool = False
    render: dict = field(default_factory=dict)
    task = "retrieval"
    needs = frozenset({"text", "image"})

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        bench, name = self.check(), self.name
        img_emb, ok, failed = encode_images(
            embedder, bench.images, batch_size, on_error=self.on_error, desc=f"{name} images", progress=progress
        )
        bench = bench.subset(ok)
        if self.i2i:
            txt_emb = encode_rendered_texts(embedder, bench.captions, batch_size, desc=f"{name} captions as images",
                                            progress=progress, **self.render)
        else:
            txt_emb = encode_texts(embedder, bench.captions, batch_size, desc=f"{name} captions", progress=progress)
        per_image = Counter(bench.caption_image)
        n_img, n_txt = len(bench.images), len(bench.captions)
        chance = {f"t2i_{k}": v for k, v in chance_recall(n_img, [1] * n_txt, KS).items()}
        chance.update({f"i2t_{k}": v for k, v in chance_recall(n_txt, [per_image[i] for i in range(n_img)], KS).items()})
        caption_kind = "image (caption rendered as an 800x400 image)" if self.i2i else "text"
        protocol = {
            "task": "retrieval",
            **bench.meta,
            "images": n_img,
            "captions": n_txt,
            "captions_per_image": sorted(set(per_image.values())),
            "t2i": f"{n_txt} caption queries vs {n_img} image candidates (1 positive each)",
            "i2t": f"{n_img} image queries vs {n_txt} caption candidates (hit if any own caption is in the top k)",
            "caption_input": caption_kind,
            "unreadable_images_skipped": failed,
            "chance": floats(chance),
            "prompts": {
                "image": prompt_record(embedder, "image"),
                **({} if self.i2i else {"text": prompt_record(embedder, "text", bench.captions[0])}),
            },
        }
        return {"metrics": floats(retrieval_scores(img_emb, txt_emb, bench.caption_image)), "protocol": protocol}

    def validation_plan(self, limit: int | None = None, seed: int = 42) -> ValidationPlan:
        """The first `limit` images (all: None) and their captions: images are ids 0..n-1, captions follow."""
        if self.i2i:
            raise ConfigError(f"{self.name}: i2i=true (captions rendered as images) has no validation form")
        bench = self.check()
        if limit:
            bench = bench.subset(list(range(min(limit, len(bench.images)))))
        n_img, n_txt = len(bench.images), len(bench.captions)
        items = [image_item(p) for p in bench.images] + [text_item(c) for c in bench.captions]

        def score(ids: torch.Tensor, emb: torch.Tensor) -> dict:
            full, present = table(ids, emb, n_img + n_txt)
            ok = [i for i in present if i < n_img]  # unreadable images are absent, as run() skips them
            index = {old: new for new, old in enumerate(ok)}
            embedded = set(present)  # all captions, except in a partial pass (sanity check, limit_val_batches)
            captions = [j for j in range(n_txt) if bench.caption_image[j] in index and n_img + j in embedded]
            if not ok or not captions:
                return {}
            images = [index[bench.caption_image[j]] for j in captions]
            return retrieval_scores(full[ok], full[[n_img + j for j in captions]], images)

        # caption_image: caption j (item n_img + j) describes image item caption_image[j] (lit.tensorboard_views)
        return ValidationPlan(items, score, {"images": n_img, "captions": n_txt, "caption_image": list(bench.caption_image)})


def retrieval_scores(img_emb: torch.Tensor, txt_emb: torch.Tensor, caption_image: list[int]) -> dict:
    """Text->image and image->text Recall@1/5/10 (unrounded): `caption_image[j]` is the row of `img_emb` caption j
    describes."""
    metric = ImageTextRecall(ks=KS)
    metric.update(image_emb=img_emb, image_ids=torch.arange(len(img_emb)))
    metric.update(text_emb=txt_emb, text_ids=torch.arange(len(txt_emb)), text_image_ids=torch.tensor(caption_image))
    return {k: float(v) for k, v in metric.compute().items()}
