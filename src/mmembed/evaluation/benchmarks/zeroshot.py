"""Zero-shot classification (`ZeroShotBenchmark`): each image vs one text per class (the text prompt around
`template` filled with the class name); accuracy@1/@5."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmembed.data.evalsets.zeroshot import ZeroShotBenchmark as ZeroShotSet
from mmembed.data.evalsets.zeroshot import read_zeroshot
from mmembed.evaluation.benchmarks.base import Benchmark
from mmembed.evaluation.common import floats, prompt_record
from mmembed.evaluation.encode import encode_images, encode_texts
from mmembed.metrics.zeroshot import ZeroShotAccuracy


@dataclass(kw_only=True)
class ZeroShotBenchmark(Benchmark):
    """`root`: the class-per-folder layout of data.evalsets.zeroshot (image files under `image_dir`, default
    root); `template`: e.g. "a photo of a {}."; `max_images`: the first N images."""

    root: str
    image_dir: str | None = None
    template: str = "{}"
    max_images: int | None = None
    on_error: str = "skip"
    task = "zeroshot"
    needs = frozenset({"text", "image"})

    def check(self) -> ZeroShotSet:
        return read_zeroshot(self.root, self.name, self.image_dir)

    def run(self, embedder, batch_size: int = 16, progress: bool = True) -> dict:
        bench, name, template = self.check(), self.name, self.template or "{}"
        images, labels = bench.images, bench.labels
        if self.max_images:
            images, labels = images[: self.max_images], labels[: self.max_images]
        class_texts = [template.format(c) for c in bench.class_names]
        cls_emb = encode_texts(embedder, class_texts, batch_size, desc=f"{name} classes", progress=progress)
        img_emb, ok, failed = encode_images(embedder, images, batch_size, on_error=self.on_error,
                                            desc=f"{name} images", progress=progress)
        metric = ZeroShotAccuracy(ks=(1, 5))
        metric.update(class_emb=cls_emb, class_ids=torch.arange(len(class_texts)))
        metric.update(image_emb=img_emb, labels=torch.tensor([labels[i] for i in ok]), ids=torch.tensor(ok))
        n_cls = len(class_texts)
        protocol = {
            "task": "zeroshot",
            **bench.meta,
            "images": len(ok),
            "classes": n_cls,
            "class_text_template": template,
            "unreadable_images_skipped": failed,
            "chance": {"acc@1": round(100 / n_cls, 4), "acc@5": round(100 * min(5, n_cls) / n_cls, 4)},
            "prompts": {"image": prompt_record(embedder, "image"),
                        "text": prompt_record(embedder, "text", class_texts[0])},
        }
        return {"metrics": floats(metric.compute()), "protocol": protocol}
