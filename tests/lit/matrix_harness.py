"""Every recipe of conf/experiment, 2 steps each, in one set of processes: the strategy matrix's launcher.

    python tests/lit/matrix_harness.py MODEL_DIR OUT_DIR {single|ddp} RECIPE [RECIPE ...]

`single`: one process, data.batch_size=4; `ddp`: Lightning's `trainer=ddp` on 2 gloo CPU processes,
data.batch_size=2 per rank (Lightning re-launches this file with the same arguments for rank 1; the
recipes then run one after the other in the same process group, as tests/lit/harness.py does). Each
recipe is composed from conf/train.yaml exactly as `src/train.py experiment=<recipe>` composes it and
goes through `run_training`; `data.train_limit=4` makes every step's global batch the same 4 rows
whatever the sampler's order (one batch per epoch), so the two launches' losses are comparable.
Rank 0 writes OUT_DIR/<recipe>.json: the final train/loss, the step count and the saved adapter's
tensors' path. Imports only mmembed (the re-launched rank does not have `tests` on its path).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = os.environ.get("MMEMBED_DATA", str(REPO.parent / "shared" / "data"))
ROWS = 4
TRIPLETS = """sent0,sent1,hard_neg
A dog runs through the snow.,An animal is outside in the cold.,A cat sleeps on a sofa.
Children are playing soccer on a field.,Kids play a game outdoors.,The children are asleep in bed.
A chef dices carrots beside a steaming pot.,Someone is cutting vegetables.,A pilot lands a small plane at dusk.
A man plays the guitar on stage.,A musician performs.,A man is swimming in a lake.
"""
_T2I = "Find me an everyday image that matches the given caption: "
_I2T = "<|image_1|> Find an image caption describing the given everyday image."
MMEB_ROWS = [  # Flickr8k training images and captions (mini-MMEB's own train rows)
    {"qry": _T2I + "A black dog and a tri-colored dog playing with each other on the road .", "qry_image_path": "",
     "pos_text": "<|image_1|> Represent the given image.", "pos_image_path": "flickr8k/images/1001773457_577c3a7d70.jpg"},
    {"qry": _T2I + "A little girl is sitting in front of a large painted rainbow .", "qry_image_path": "",
     "pos_text": "<|image_1|> Represent the given image.", "pos_image_path": "flickr8k/images/1002674143_1b742ab4b8.jpg"},
    {"qry": _I2T, "qry_image_path": "flickr8k/images/1000268201_693b08cb0e.jpg",
     "pos_text": "A little girl climbing into a wooden playhouse .", "pos_image_path": ""},
    {"qry": _I2T, "qry_image_path": "flickr8k/images/1003163366_44323f5815.jpg",
     "pos_text": "a man sleeping on a bench outside with a white and black dog sitting next to him .", "pos_image_path": ""},
]

TRAIN_IMAGES = ["2501968935_02f2cd8079.jpg", "2903617548_d3e38d7f88.jpg", "2644326817_8f45080b87.jpg",
                "218342358_1755a9cce1.jpg"]  # Flickr8k training images, each with Flickr30k Entities boxes
IMAGE_RECIPES = {"image_text", "align", "mmgem", "mmgem_embedding_only", "mmgem_captioning_only", "mmgem_regions",
                 "mmgem_regions_embedding_only", "mmgem_regions_captioning_only"}


def image_sources(out: Path, regions: bool) -> list[dict]:
    """data.sources for 4 rows with 4 distinct images (the first caption of each of TRAIN_IMAGES); with `regions`,
    2 whole-image captions then region-phrase rows of the third image (the region source's own split file).
    The configured sources start with 5 captions of one image: in-batch InfoNCE over them has no negative."""
    folder = out / "captions"
    folder.mkdir(parents=True, exist_ok=True)
    flickr = Path(DATA_ROOT) / "flickr8k_224" / "text"
    firsts = {line.split("#", 1)[0]: line for line in (flickr / "Flickr8k.token.txt").read_text().splitlines()
              if line.split("\t", 1)[0].endswith("#0")}
    whole = TRAIN_IMAGES[:2] if regions else TRAIN_IMAGES
    (folder / "captions.txt").write_text("".join(firsts[name] + "\n" for name in whole))
    (folder / "train.txt").write_text("".join(name + "\n" for name in whole))
    (folder / "region_train.txt").write_text(TRAIN_IMAGES[2] + "\n")
    images = [str(Path(DATA_ROOT) / "flickr8k_224" / "images"), str(Path(DATA_ROOT) / "flickr8k" / "images")]
    splits = {"dev": str(flickr / "Flickr_8k.devImages.txt"), "test": str(flickr / "Flickr_8k.testImages.txt")}
    sources = [{"name": "captions", "format": "flickr8k_token", "captions": str(folder / "captions.txt"),
                "images": images, "split": "train", "split_files": {**splits, "train": str(folder / "train.txt")},
                "heldout_splits": ["dev", "test"]}]
    if regions:
        sources.append({"name": "regions", "format": "flickr30k_entities", "captions": str(flickr / "Flickr8k.token.txt"),
                        "images": images, "split": "train", "heldout_splits": ["dev", "test"], "min_side": 8,
                        "split_files": {**splits, "train": str(folder / "region_train.txt")},
                        "entities": str(Path(DATA_ROOT) / "flickr30k_entities" / "flickr8k_entities.jsonl.gz")})
    return sources


# Each recipe's own overrides: the tiny model stands in for the recipe's base (e5v_paper names an 8B model
# and SimCSE's NLI file, which is not in the shared data: data=nli keeps its text triplets),
# and settings that only size a real run are shrunk.
RECIPES: dict[str, list[str]] = {
    "text_only": ["experiment=text_only"],
    # float32 weights: its bfloat16 ones round differently for a batch of 2 and of 4 (~1e-3 in the loss)
    "e5v_paper": ["experiment=e5v_paper", "~val.sets.stsb_dev", "data=nli", "model.dtype=float32"],
    # its teacher embeds every sentence of the training files before train_limit applies: 4 triplets of its own
    "unime_stage1": ["experiment=unime_stage1", "data.train_files=[{out}/triplets.csv]"],
    # the KL without each text's own column: that column sits at another global index on each rank
    "unime_stage1_hour": ["experiment=unime_stage1_hour", "data.train_files=[{out}/triplets.csv]"],
    # 4 MMEB rows of its own (text->image and image->text: ranks embed different modality mixes)
    "unime_stage2": ["experiment=unime_stage2", "lora.r=4", "data.train_files=[{out}/mini_mmeb/train]",
                     "data.image_root={data_root}"],
    "image_text": ["experiment=image_text"],
    "align": ["experiment=align"],
    "mmgem": ["experiment=mmgem", "lora.r=4"],
    # the conflict arms: each leaves one head without a gradient (DDP's unused-parameter failure, fixed)
    "mmgem_embedding_only": ["experiment=mmgem", "arm=embedding_only", "lora.r=4"],
    "mmgem_captioning_only": ["experiment=mmgem", "arm=captioning_only", "lora.r=4"],
    "mmgem_regions": ["experiment=mmgem_regions", "lora.r=4"],
    "mmgem_regions_embedding_only": ["experiment=mmgem_regions", "arm=embedding_only", "lora.r=4"],
    "mmgem_regions_captioning_only": ["experiment=mmgem_regions", "arm=captioning_only", "lora.r=4"],
}


class LossRecorder(L.Callback):
    """Each step's loss, averaged over ranks (what `train/loss` logs), written by rank 0 at the end of training."""

    def __init__(self, path: str):
        self.path, self.losses = Path(path), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(trainer.strategy.reduce(loss.detach(), reduce_op="mean")))  # every rank

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.losses))


def overrides(recipe: str, model_dir: str, out: Path, mode: str) -> list[str]:
    strategy = (["trainer=ddp", "trainer.devices=2", "data.batch_size=2"] if mode == "ddp"
                else ["trainer=cpu", "trainer.devices=1", f"data.batch_size={ROWS}"])
    return [*(o.format(out=out, data_root=DATA_ROOT) for o in RECIPES[recipe]), *strategy, "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.val_check_interval=null",
            f"data.train_limit={ROWS}", "val=none", "validate_before_training=false", "~logger",
            f"model.name_or_path={model_dir}", f"paths.cache_dir={out / 'cache'}",
            f"paths.models_dir={out / mode / recipe / 'models'}", f"paths.output_dir={out / mode / recipe}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("mode", choices=["single", "ddp"])
    parser.add_argument("recipes", nargs="+")
    args = parser.parse_args()
    os.environ.setdefault("MMEMBED_ROOT", str(REPO))
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mmembed.run.training import run_training

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "triplets.csv").write_text(TRIPLETS)
    mmeb = args.out_dir / "mini_mmeb" / "train"
    mmeb.mkdir(parents=True, exist_ok=True)
    (mmeb / "rows.jsonl").write_text("".join(json.dumps({**r, "neg_text": "", "neg_image_path": ""}) + "\n"
                                             for r in MMEB_ROWS))
    for recipe in args.recipes:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides(recipe, args.model_dir, args.out_dir, args.mode))
        if recipe in IMAGE_RECIPES:
            cfg.data.sources = image_sources(args.out_dir / recipe, regions=recipe.startswith("mmgem_regions"))
        losses = args.out_dir / f"{args.mode}_{recipe}.losses.json"
        # this file is importable as `matrix_harness` by both ranks (its folder is sys.path[0])
        with open_dict(cfg):
            cfg.callbacks.loss_recorder = {"_target_": "matrix_harness.LossRecorder", "path": str(losses)}
        summary = run_training(cfg)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            record = {"losses": json.loads(losses.read_text()), "global_step": summary["global_step"],
                      "output_dir": summary["output_dir"]}
            (args.out_dir / f"{args.mode}_{recipe}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
