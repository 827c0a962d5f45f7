"""What each mini-MMEB dataset is (its .meta.json) and the README.md written beside the files."""

from __future__ import annotations

import json

# Eval dataset -> its metadata: meta-task, IND (a train file of the same source is built) / OOD, provenance.
DATASETS = {
    "Flickr8k_t2i": {
        "meta_task": "retrieval", "distribution": "IND", "source": "Flickr8k official test split (1,000 images)",
        "built": "query = the image's first caption (#0) after MMEB's t2i instruction; candidates = the image + 99 "
                 "seeded other test images whose first caption is a different sentence",
    },
    "Flickr8k_i2t": {
        "meta_task": "retrieval", "distribution": "IND", "source": "Flickr8k official test split (1,000 images)",
        "built": "query = the image with MMEB's i2t instruction; candidates = its first caption + the first captions "
                 "of 99 seeded other test images (none the same sentence)",
    },
    "ImageNet-sample": {
        "meta_task": "classification", "distribution": "OOD", "source": "imagenet_sample (1,000 images, one per class)",
        "built": "query = the image with MMEB's classification instruction; candidates = its class name + 99 seeded "
                 "other class names (never one spelled like the gold: ImageNet has two 'crane's and 'maillot's)",
        "flag": "NOT zero-shot for the offline default: its EfficientNet-Lite0 vision tower was trained on ImageNet "
                "labels (and ships the ImageNet head)",
    },
    "CIRR-12": {
        "meta_task": "retrieval", "distribution": "OOD", "source": "CIRR val, the 12 queries whose images are local",
        "built": "query = reference image + modification text with MMEB's CIRR instruction; candidates = the target + "
                 "the other local val images (the 13 local val images minus the reference: 12), seeded order after "
                 "the gold",
    },
    "easy-VQA": {
        "meta_task": "vqa", "distribution": "IND", "synthetic": True,
        "source": "easy-vqa package, test split (1,000 synthetic shape images, 9,673 questions)",
        "built": "one seeded question per test image with MMEB's VQA instruction; candidates = its answer + the other "
                 "12 answers of easy-VQA's answer list, seeded order",
        "flag": "SYNTHETIC images (coloured shapes), not natural photos",
    },
    "Flickr30k-Entities-8k": {
        "meta_task": "grounding", "distribution": "IND",
        "source": "Flickr30k Entities boxes of the Flickr8k official test images",
        "built": "query = the image + one seeded phrase whose chain has exactly one box; candidates = the crop of that "
                 "box + up to 7 crops of the image's other phrases' boxes (not scene, IoU with the gold <= 0.5, not "
                 "the same phrase, sides >= 8 px, < 90% of the image); boxes normalised by the recorded original "
                 "size, then scaled to the 224x224 copy",
    },
}

TRAIN = {
    "Flickr8k_t2i": "every caption of the official train split's local images (3,513: 2,760 at 224 px + 753 smaller "
                    "renditions), captions equal to a dev/test caption dropped (as conf/data/image_text.yaml) -> "
                    "its image",
    "Flickr8k_i2t": "the same pairs, image -> caption",
    "Flickr8k_concepts": "classification-style labels read off the captions: a train image's label is the concept word "
                         "(of 18: dog, man, woman, boy, girl, child, baby, people, bicycle, horse, car, ball, water, "
                         "snow, beach, grass, street, mountain; with plural/synonym forms) that most of its 5 captions "
                         "use, when at least 3 do; images with no such concept are left out. Flickr8k has no labels: "
                         "these are a stand-in so the train file has a classification task",
    "easy-VQA": "every train question of easy-vqa's 4,000 train images -> its answer",
    "Flickr30k-Entities-8k": "one seeded single-box phrase per train image -> its crop; the hard negative is the crop "
                             "of another region of the same image",
}


def readme(counts: dict, command: str) -> str:
    lines = [
        f"# {counts['version']}: a local mini-MMEB", "",
        f"Built by `{command}` from `{counts['data_root']}` only (seed {counts['seed']}, limit {counts['limit']}). "
        "Rebuilding gives byte-identical files. Evaluate with `python src/eval.py eval=mini_mmeb`.", "",
        "Format: exactly MMEB's. `eval/<Dataset>.jsonl` rows are `qry_inst, qry_text, qry_img_path, tgt_inst, "
        "tgt_text[], tgt_img_path[]` with the gold target at index 0; `train/<Dataset>.jsonl` rows are `qry, "
        "qry_image_path, pos_text, pos_image_path, neg_text, neg_image_path`; `<|image_1|>` marks the image. "
        "Image paths are relative to `images/`, which links the shared image folders (never copied), holds copies "
        "of easy-VQA's images and the grounding crops (`images/crops.tsv`: each crop's source image and box).", "",
        "Score: hit@1 over each query's own candidates, averaged per dataset, meta-task, IND/OOD and overall. These "
        "numbers are NOT comparable with MMEB's (other datasets, far fewer candidates for VQA and grounding).", "",
        "## Eval datasets", "",
        "| dataset | meta-task | IND/OOD | queries | candidates/query | distinct images |", "|---|---|---|---|---|---|",
    ]
    for name, c in counts["eval"].items():
        d = DATASETS[name]
        lines.append(f"| {name} | {d['meta_task']} | {d['distribution']} | {c['queries']} | "
                     f"{c['candidates_per_query'][0]}-{c['candidates_per_query'][1]} | {c['distinct_images']} |")
    lines += [""]
    for name in counts["eval"]:
        d = DATASETS[name]
        lines += [f"- **{name}** ({d['source']}): {d['built']}." + (f" **FLAG: {d['flag']}.**" if "flag" in d else "")]
    lines += ["", "IND = a train file of the same source is built here; OOD = none is (ImageNet: the train file's "
              "classification labels come from Flickr8k captions, another label space; CIRR: no composed training).",
              "", "## Train datasets (training images only)", "", "| dataset | rows |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in counts["train"].items()]
    lines += [""] + [f"- **{name}**: {TRAIN[name]}." for name in counts["train"]]
    dropped = counts.get("heldout_dropped", {})
    lines += ["", f"Left out of the train files: {sum(dropped.values())} rows holding a sentence of an evaluation set "
              "(conf/heldout/local.yaml; also inside an instruction), per dataset: "
              + (", ".join(f"{name} {n}" for name, n in dropped.items()) or "none") + "."]
    d = counts["disjoint"]
    lines += ["", "## Disjointness", "",
              f"Eval rows use {d['eval_source_images']} source images (crops traced to theirs), train rows "
              f"{d['train_source_images']}; no file and no file content (SHA-256) is in both. Flickr8k follows its "
              "official split; easy-VQA its own train/test split; ImageNet and CIRR images are eval only.", "",
              "## Counts", "", "```json", json.dumps(counts, indent=2), "```", ""]
    return "\n".join(lines)
