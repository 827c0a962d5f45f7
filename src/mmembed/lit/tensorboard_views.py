"""TensorBoard pictures of validation (conf/callbacks/default.yaml: tensorboard_views), beside the scalars:

- Images tab, `val/<set>/top<k>_retrievals` at every validation: `n_queries` fixed caption queries of an image-text
  retrieval set (the first caption of images spread evenly over the set) with their top-k images, the correct one
  framed green (lit.retrieval_pictures), so step 0 and the last step can be compared;
- Projector tab, `<set>/before` (the step-0 validation) and `<set>/after` (the last validation, at the end of
  training): the first `projector_limit` images and their captions in one space (sprites: image thumbnails, captions
  as blue "T" tiles; metadata: kind, text, image_id), where the modality gap shows;
- Custom Scalars tab, written once at the start of fit: one section per validation set, one chart per metric family
  (t2i_R@1/5/10 together).

It reads the module's last gathered validation tables (`EmbeddingLitModule.last_validation`). Only global rank 0
writes; nothing is done without a TensorBoard logger, or when the set is not validated or has no caption->image
plan (said once in the log).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict

import lightning as L
import numpy as np
import torch

from mmembed.lit.retrieval_pictures import render_retrieval_grid, text_tile, thumbnail, top_k_rows

log = logging.getLogger(__name__)


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, else None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def custom_scalars_layout(metrics: dict[str, list[str]]) -> dict:
    """{set: [metric, ...]} -> add_custom_scalars' layout: a section `val/<set>`, one multiline chart per family
    (the metric name before "@": t2i_R@1, t2i_R@5 and t2i_R@10 share the chart t2i_R)."""
    layout = {}
    for name, names in metrics.items():
        families = defaultdict(list)
        for metric in names:
            families[metric.split("@")[0]].append(f"^{re.escape(f'val/{name}/{metric}')}$")
        layout[f"val/{name}"] = {family: ["Multiline", tags] for family, tags in families.items()}
    return layout


def metric_names(plan) -> list[str]:
    """The metrics a validation plan's scoring gives (scored once on random unit vectors: no model needed)."""
    n = len(plan.items)
    emb = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    return [*plan.score(torch.arange(n), emb), "inputs"]


def query_captions(caption_image: list[int], n_images: int, n_queries: int) -> list[int]:
    """The first caption of `n_queries` images spread evenly over the set: fixed across validations, and not all
    about one image (the first captions of a caption file are often one image's five)."""
    first = {}
    for j, image in enumerate(caption_image):
        first.setdefault(image, j)
    images = sorted(first)
    if not images or n_queries < 1:
        return []
    picks = np.linspace(0, len(images) - 1, min(n_queries, len(images))).round().astype(int)
    return [first[images[i]] for i in dict.fromkeys(picks.tolist())]


def _clean(text: str) -> str:
    return " ".join(str(text).split())  # metadata.tsv is tab- and line-separated


class TensorBoardViews(L.Callback):
    def __init__(self, set_name: str = "flickr8k_dev", n_queries: int = 4, top_k: int = 5, projector_limit: int = 100,
                 thumbnail_size: int = 96, sprite_size: int = 32):
        self.set_name, self.n_queries, self.top_k = set_name, int(n_queries), int(top_k)
        self.projector_limit, self.thumbnail_size, self.sprite_size = int(projector_limit), int(thumbnail_size), int(sprite_size)
        self._said: set[str] = set()
        self._before_written = False
        self._last: tuple[int, object, torch.Tensor, torch.Tensor] | None = None  # (step, plan, ids, emb)

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.info(message)

    # ---- Custom Scalars ----
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sets = pl_module.validation or getattr(getattr(trainer, "datamodule", None), "validation", None)
        if sets is None or not sets.names:
            return
        plans = sets.setup()
        # Every rank scores: torchmetrics' compute() syncs across ranks under DDP, so rank 0 alone would wait forever.
        names = {name: metric_names(plans[name]) for name in sets.names}
        writer = tensorboard_writer(trainer) if trainer.is_global_zero else None
        if writer is not None:
            writer.add_custom_scalars(custom_scalars_layout(names))

    # ---- Images and Projector ----
    def _retrieval_table(self, pl_module):
        """(plan, ids, emb) of the set from the last validation, or None (said once why)."""
        last = getattr(pl_module, "last_validation", None)
        if last is None:
            return None
        sets, gathered = last
        if self.set_name not in sets.names:
            self._say_once("absent", f"tensorboard_views: validation set {self.set_name!r} is not validated "
                                     f"(val= picks {sets.names}); no retrieval pictures or projector")
            return None
        plan = sets.setup()[self.set_name]
        if "caption_image" not in plan.meta or self.set_name not in gathered:
            self._say_once("kind", f"tensorboard_views: {self.set_name!r} is not a caption->image retrieval set; "
                                   "no retrieval pictures or projector")
            return None
        ids, emb = gathered[self.set_name]
        return plan, ids.reshape(-1).long().cpu(), emb.detach().float().cpu()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the module's on_validation_epoch_end (callbacks' epoch-end hooks run before the module's)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer)
        table = self._retrieval_table(pl_module) if writer is not None else None
        if table is None:
            return
        plan, ids, emb = table
        step = trainer.global_step
        grid = self.retrieval_grid(plan, ids, emb)
        if grid is not None:
            writer.add_image(f"val/{self.set_name}/top{self.top_k}_retrievals", grid, step, dataformats="HWC")
        if step == 0 and not self._before_written and self.projector_limit > 0:
            self.add_projector(writer, plan, ids, emb, "before", step)
            self._before_written = True
        self._last = (step, plan, ids, emb)
        writer.flush()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer) if trainer.is_global_zero else None
        if writer is None or self._last is None or self.projector_limit < 1:
            return
        step, plan, ids, emb = self._last
        if step == 0:  # no validation after a training step: "after" would repeat "before"
            return
        self.add_projector(writer, plan, ids, emb, "after", step)
        writer.flush()

    # ---- drawing ----
    def retrieval_grid(self, plan, ids: torch.Tensor, emb: torch.Tensor) -> np.ndarray | None:
        n_img, caption_image = plan.meta["images"], plan.meta["caption_image"]
        rows = {int(i): r for r, i in enumerate(ids.tolist())}
        images = [i for i in range(n_img) if i in rows]  # unreadable images are absent
        index = {image: r for r, image in enumerate(images)}
        queries = [j for j in query_captions(caption_image, n_img, self.n_queries)
                   if caption_image[j] in index and n_img + j in rows]
        if not images or not queries:
            return None
        query_emb = emb[[rows[n_img + j] for j in queries]]
        image_emb = emb[[rows[i] for i in images]]
        found = top_k_rows([plan.items[n_img + j]["text"] for j in queries], query_emb, image_emb,
                           [plan.items[i]["image"] for i in images], [index[caption_image[j]] for j in queries],
                           self.top_k)
        return render_retrieval_grid(found, self.thumbnail_size)

    def add_projector(self, writer, plan, ids: torch.Tensor, emb: torch.Tensor, when: str, step: int) -> None:
        """The first `projector_limit` images and their captions, one point each, in one embedding space."""
        n_img, caption_image = plan.meta["images"], plan.meta["caption_image"]
        rows = {int(i): r for r, i in enumerate(ids.tolist())}
        images = [i for i in range(min(n_img, self.projector_limit)) if i in rows]
        chosen = set(images)
        captions = [j for j, image in enumerate(caption_image) if image in chosen and n_img + j in rows]
        if not images:
            return
        stem = {i: _image_id(plan.items[i]["image"]) for i in images}
        metadata = [["image", stem[i], stem[i]] for i in images]
        metadata += [["caption", _clean(plan.items[n_img + j]["text"]), stem[caption_image[j]]] for j in captions]
        tiles = [thumbnail(plan.items[i]["image"], self.sprite_size, square=True) for i in images]
        tiles += [text_tile(self.sprite_size)] * len(captions)
        label_img = torch.from_numpy(np.stack([np.asarray(t) for t in tiles])).permute(0, 3, 1, 2).float() / 255
        mat = emb[[rows[i] for i in images] + [rows[n_img + j] for j in captions]]
        writer.add_embedding(mat, metadata=metadata, label_img=label_img, global_step=step,
                             tag=f"{self.set_name}/{when}", metadata_header=["kind", "text", "image_id"])


def _image_id(path) -> str:
    from pathlib import Path

    return Path(str(path)).stem
