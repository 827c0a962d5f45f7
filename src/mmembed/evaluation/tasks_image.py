"""Image-text retrieval (text->image and image->text Recall@k) and zero-shot classification."""

from __future__ import annotations

from collections import Counter

import torch

from mmembed.data.evalsets.captions import read_caption_config
from mmembed.data.evalsets.zeroshot import read_zeroshot
from mmembed.evaluation.common import chance_recall, floats, option, prompt_record, required
from mmembed.evaluation.encode import encode_images, encode_rendered_texts, encode_texts
from mmembed.metrics.retrieval import ImageTextRecall
from mmembed.metrics.zeroshot import ZeroShotAccuracy

KS = (1, 5, 10)


def read_caption_benchmark(cfg):
    return read_caption_config(cfg)


def run_retrieval(embedder, cfg, batch_size: int = 16, progress: bool = True) -> dict:
    bench = read_caption_benchmark(cfg)
    name, on_error = cfg.get("name", bench.name), option(cfg, "on_error", "skip")
    img_emb, ok, failed = encode_images(
        embedder, bench.images, batch_size, on_error=on_error, desc=f"{name} images", progress=progress
    )
    bench = bench.subset(ok)
    i2i = bool(option(cfg, "i2i", False))
    if i2i:
        render = dict(option(cfg, "render", {}))
        txt_emb = encode_rendered_texts(embedder, bench.captions, batch_size, desc=f"{name} captions as images",
                                        progress=progress, **render)
    else:
        txt_emb = encode_texts(embedder, bench.captions, batch_size, desc=f"{name} captions", progress=progress)
    metric = ImageTextRecall(ks=KS)
    metric.update(image_emb=img_emb, image_ids=torch.arange(len(bench.images)))
    metric.update(text_emb=txt_emb, text_ids=torch.arange(len(bench.captions)),
                  text_image_ids=torch.tensor(bench.caption_image))
    per_image = Counter(bench.caption_image)
    n_img, n_txt = len(bench.images), len(bench.captions)
    chance = {f"t2i_{k}": v for k, v in chance_recall(n_img, [1] * n_txt, KS).items()}
    chance.update({f"i2t_{k}": v for k, v in chance_recall(n_txt, [per_image[i] for i in range(n_img)], KS).items()})
    caption_kind = "image (caption rendered as an 800x400 image)" if i2i else "text"
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
            **({} if i2i else {"text": prompt_record(embedder, "text", bench.captions[0])}),
        },
    }
    return {"metrics": floats(metric.compute()), "protocol": protocol}


def read_zeroshot_benchmark(cfg):
    return read_zeroshot(required(cfg, "root"), cfg.get("name", "zeroshot"), cfg.get("image_dir"))


def run_zeroshot(embedder, cfg, batch_size: int = 16, progress: bool = True) -> dict:
    bench = read_zeroshot_benchmark(cfg)
    template = option(cfg, "template", "{}")
    name, on_error = cfg.get("name", bench.name), option(cfg, "on_error", "skip")
    images, labels = bench.images, bench.labels
    if cfg.get("max_images"):
        images, labels = images[: cfg["max_images"]], labels[: cfg["max_images"]]
    class_texts = [template.format(c) for c in bench.class_names]
    cls_emb = encode_texts(embedder, class_texts, batch_size, desc=f"{name} classes", progress=progress)
    img_emb, ok, failed = encode_images(embedder, images, batch_size, on_error=on_error,
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
        "prompts": {"image": prompt_record(embedder, "image"), "text": prompt_record(embedder, "text", class_texts[0])},
    }
    return {"metrics": floats(metric.compute()), "protocol": protocol}
