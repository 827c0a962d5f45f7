"""The mini-MMEB's datasets that need no new image files: Flickr8k retrieval both ways, ImageNet-sample
classification, CIRR-12 composed retrieval, easy-VQA, and classification-style train labels from captions.

Each builder returns MMEB rows (eval: `qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[], tgt_img_path[]`,
gold first; train: `qry, qry_image_path, pos_text, pos_image_path, neg_text, neg_image_path`). Instructions
follow MMEB's wording for the matching task. `ctx` (mmembed.prep.mini_mmeb.build.BuildContext) gives image paths
relative to the image root, seeded random generators and the `limit`.
"""

from __future__ import annotations

import re
from collections import Counter

from mmembed.data.evalsets.caption_splits import normalise_caption
from mmembed.data.evalsets.captions import read_caption_config
from mmembed.data.evalsets.cir import read_cirr
from mmembed.data.evalsets.zeroshot import read_zeroshot

T2I_INST = "Find me an everyday image that matches the given caption:"
I2T_INST = "<|image_1|> Find an image caption describing the given everyday image."
IMAGE_TGT_INST = "<|image_1|> Represent the given image."
CLS_INST = "<|image_1|> Represent the given image for classification"
VQA_INST = "<|image_1|> Represent the given image with the following question:"
CIRR_INST = "<|image_1|> Given an image, find a similar everyday image with the described changes:"
N_CANDIDATES = 100  # gold + 99 others, for retrieval and classification

# Train-image "classes" read off the captions: a concept names an image when >= 3 of its 5 captions use it.
CONCEPTS = {
    "dog": ("dog", "dogs", "puppy"), "man": ("man", "men"), "woman": ("woman", "women"), "boy": ("boy", "boys"),
    "girl": ("girl", "girls"), "child": ("child", "children", "kid", "kids"), "baby": ("baby", "toddler"),
    "people": ("people", "crowd"), "bicycle": ("bike", "bicycle", "biker", "cyclist"), "horse": ("horse", "horses"),
    "car": ("car", "cars"), "ball": ("ball",), "water": ("water", "pool", "lake", "ocean", "river"),
    "snow": ("snow", "snowy"), "beach": ("beach", "sand"), "grass": ("grass", "grassy", "field"),
    "street": ("street", "road", "sidewalk"), "mountain": ("mountain", "hill", "rocks"),
}
MIN_CAPTIONS_FOR_CONCEPT = 3


def eval_row(qry_inst, qry_text, qry_img, tgt_inst, tgt_texts, tgt_imgs) -> dict:
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry_img, "tgt_inst": tgt_inst,
            "tgt_text": list(tgt_texts), "tgt_img_path": list(tgt_imgs)}


def train_row(qry, qry_img, pos_text, pos_img, neg_text="", neg_img="") -> dict:
    return {"qry": qry, "qry_image_path": qry_img, "pos_text": pos_text, "pos_image_path": pos_img,
            "neg_text": neg_text, "neg_image_path": neg_img}


def flickr8k_split(ctx, split: str):
    """(image names, paths, their captions) of one official Flickr8k split over both local copies, name-sorted.
    The train split drops captions equal to a dev/test caption, as the training configs do."""
    text = ctx.data_root / "flickr8k_224" / "text"
    cfg = {"name": f"flickr8k_{split}", "format": "flickr8k_token", "captions": str(text / "Flickr8k.token.txt"),
           "images": [str(ctx.data_root / "flickr8k_224" / "images"), str(ctx.data_root / "flickr8k" / "images")],
           "split": split, "split_files": {s: str(text / f"Flickr_8k.{s}Images.txt") for s in ("train", "dev", "test")}}
    if split == "train":
        cfg["heldout_splits"] = ["dev", "test"]
    bench = read_caption_config(cfg, check_images=split != "train")
    order = sorted(range(len(bench.images)), key=lambda i: bench.image_ids[i])[: ctx.limit]
    captions = {i: [] for i in order}
    for caption, i in zip(bench.captions, bench.caption_image):
        if i in captions:
            captions[i].append(caption)
    return [bench.image_ids[i] for i in order], [bench.images[i] for i in order], [captions[i] for i in order]


def flickr8k_retrieval(ctx) -> dict[str, list[dict]]:
    """Eval (official test split): each image's first caption; t2i and i2t against gold + 99 seeded others.
    Train (official train split, local images): every caption, both directions."""
    names, paths, caps = flickr8k_split(ctx, "test")
    first = [c[0] for c in caps]
    norm = [normalise_caption(c) for c in first]
    rels = [ctx.rel(p) for p in paths]

    def others(i: int, rng) -> list[int]:  # other images whose caption is not the gold sentence
        pool = [j for j in range(len(names)) if j != i and norm[j] != norm[i]]
        return rng.sample(pool, min(N_CANDIDATES - 1, len(pool)))

    rng = ctx.rng("Flickr8k_t2i")
    t2i = [eval_row(T2I_INST, first[i], "", IMAGE_TGT_INST, [""] * (1 + len(o)), [rels[i]] + [rels[j] for j in o])
           for i in range(len(names)) for o in [others(i, rng)]]
    rng = ctx.rng("Flickr8k_i2t")
    i2t = [eval_row(I2T_INST, "", rels[i], "", [first[i]] + [first[j] for j in o], [""] * (1 + len(o)))
           for i in range(len(names)) for o in [others(i, rng)]]
    _, tpaths, tcaps = flickr8k_split(ctx, "train")
    train_t2i = [train_row(f"{T2I_INST} {c}", "", IMAGE_TGT_INST, ctx.rel(p))
                 for p, cs in zip(tpaths, tcaps) for c in cs]
    train_i2t = [train_row(I2T_INST, ctx.rel(p), c, "") for p, cs in zip(tpaths, tcaps) for c in cs]
    return {"eval/Flickr8k_t2i": t2i, "eval/Flickr8k_i2t": i2t,
            "train/Flickr8k_t2i": train_t2i, "train/Flickr8k_i2t": train_i2t}


def caption_concept(captions: list[str]) -> str | None:
    """The concept most captions of an image use (>= 3 of them; ties: CONCEPTS order), else None."""
    counts = Counter()
    for caption in captions:
        words = set(re.findall(r"[a-z]+", caption.lower()))
        counts.update(concept for concept, forms in CONCEPTS.items() if words & set(forms))
    best = max(CONCEPTS, key=lambda c: (counts[c], -list(CONCEPTS).index(c)))
    return best if counts[best] >= MIN_CAPTIONS_FOR_CONCEPT else None


def flickr8k_concepts_train(ctx) -> dict[str, list[dict]]:
    """Classification-style train rows: a train image -> its caption concept (images without one are left out)."""
    _, paths, caps = flickr8k_split(ctx, "train")
    rows = [train_row(CLS_INST, ctx.rel(p), label, "") for p, c in zip(paths, caps) if (label := caption_concept(c))]
    return {"train/Flickr8k_concepts": rows}


def imagenet_classification(ctx) -> dict[str, list[dict]]:
    """Each ImageNet-sample image vs its class name + 99 seeded other class names (never one spelled the same)."""
    bench = read_zeroshot(ctx.data_root / "imagenet_sample", "ImageNet-sample")
    rng, rows = ctx.rng("ImageNet-sample"), []
    for path, label in list(zip(bench.images, bench.labels))[: ctx.limit]:
        gold = bench.class_names[label]
        pool = sorted({n for n in bench.class_names if n != gold})
        others = rng.sample(pool, min(N_CANDIDATES - 1, len(pool)))
        rows.append(eval_row(CLS_INST, "", ctx.rel(path), "", [gold] + others, [""] * (1 + len(others))))
    return {"eval/ImageNet-sample": rows}


def cirr_local(ctx) -> dict[str, list[dict]]:
    """CIRR's 12 locally complete val queries: target + the other local images, the reference excluded."""
    root = ctx.data_root / "cirr"
    bench = read_cirr(root, "val", image_dir=root / "images_dev_subset",
                      captions_file=root / "cap.rc2.val.local_subset12.json", gallery="available")
    rng, rows = ctx.rng("CIRR-12"), []
    for q in bench.queries[: ctx.limit]:
        others = [n for n in bench.gallery if n not in (q.reference, q.target)]
        rng.shuffle(others)
        targets = [q.target] + others
        rows.append(eval_row(CIRR_INST, q.caption, ctx.rel(bench.gallery[q.reference]), IMAGE_TGT_INST,
                             [""] * len(targets), [ctx.rel(bench.gallery[n]) for n in targets]))
    return {"eval/CIRR-12": rows}


def easy_vqa(ctx) -> dict[str, list[dict]]:
    """easy-VQA (synthetic shapes): one seeded question per test image vs all 13 answers (gold first); every
    train question as a train row. Its images are copied under the image root (they live in a pip package)."""
    module = ctx.easy_vqa()
    answers = module.get_answers()
    rows, rng = [], ctx.rng("easy-VQA")
    texts, golds, image_ids = module.get_test_questions()
    by_image: dict[int, list[int]] = {}
    for i, image_id in enumerate(image_ids):
        by_image.setdefault(image_id, []).append(i)
    test_paths = module.get_test_image_paths()
    for image_id in sorted(by_image)[: ctx.limit]:
        q = rng.choice(by_image[image_id])
        others = [a for a in answers if a != golds[q]]
        rng.shuffle(others)
        rel = ctx.copy_image(test_paths[image_id], f"easy_vqa/test/{image_id}.png")
        rows.append(eval_row(VQA_INST, texts[q], rel, "", [golds[q]] + others, [""] * (1 + len(others))))
    texts, golds, image_ids = module.get_train_questions()
    train_paths = module.get_train_image_paths()
    keep = set(sorted(set(image_ids))[: ctx.limit])
    train = [train_row(f"{VQA_INST} {t}", ctx.copy_image(train_paths[i], f"easy_vqa/train/{i}.png"), a, "")
             for t, a, i in zip(texts, golds, image_ids) if i in keep]
    return {"eval/easy-VQA": rows, "train/easy-VQA": train}
