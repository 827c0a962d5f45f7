"""Validation sets during training (`val=` in config, conf/val/): one Lightning validation dataloader per set.

Each set is a benchmark of conf/benchmark/ (built by Hydra from its one-benchmark file) with validation-only
settings: `limit` (a fixed part of it: STS pairs, images, CIRR queries; null = all), `batch_size`, and `log_as`
(a metric also logged under another name, e.g. STS-B dev's spearman as the historical `val/sts_spearman`). Its
`validation_plan` lists the inputs to embed; the loader yields them featurised by kind (text, image,
composed) with their ids. The LightningModule gathers the embeddings with ids across ranks (`EmbeddingTable`,
padded duplicates dropped) and scores the whole table with the benchmark's own scoring function, so every rank
logs the same `val/<set>/<metric>`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader

from mmembed.data.images import load_image
from mmembed.errors import ConfigError, DataConfigError
from mmembed.evaluation.validation import TEXT_KIND


class ValidationSets:
    """`sets`: {name: {"benchmark": Benchmark, "limit": int | None, "batch_size": int, "log_as": {metric: key}}}."""

    def __init__(self, sets: Mapping[str, Mapping] | None, seed: int = 42, on_error: str = "skip"):
        self.sets = {name: dict(entry) for name, entry in (sets or {}).items() if entry}
        for name, entry in self.sets.items():
            if entry.get("benchmark") is None or not hasattr(entry["benchmark"], "validation_plan"):
                raise ConfigError(f"val.sets.{name}.benchmark: expected a benchmark of conf/benchmark/ (by _target_); "
                                  f"settings for a set that val= did not pick? (pick it: val=[...,{name}])")
        self.seed, self.on_error = seed, on_error
        self.plans: dict | None = None

    @property
    def names(self) -> list[str]:
        return list(self.sets)

    def benchmarks(self) -> dict:
        return {name: entry["benchmark"] for name, entry in self.sets.items()}

    def log_as(self, name: str) -> dict[str, str]:
        return dict(self.sets[name].get("log_as") or {})

    def needs_images(self) -> list[str]:
        return [name for name, b in self.benchmarks().items() if "image" in b.needs]

    def heldout_sources(self) -> dict:
        """The sets whose sentences no training row may hold (STS and caption files), for data.heldout's filter."""
        from mmembed.data.evalsets.captions import CAPTION_FORMATS
        from mmembed.data.heldout import STS_FORMATS

        return {f"val_{name}": b for name, b in self.benchmarks().items()
                if getattr(b, "format", None) in STS_FORMATS + CAPTION_FORMATS}

    def heldout_images(self) -> frozenset[str]:
        """`image_identity` of every image of every set (all of it, not only the validated `limit`)."""
        from mmembed.data.heldout import image_identity

        return frozenset(image_identity(item["image"]) for b in self.benchmarks().values()
                         for item in b.validation_plan(None, self.seed).items if item["image"])

    def check(self, featurizer=None) -> None:
        """Read every set's files (before the model loads) and refuse image sets a text-only model cannot embed."""
        images = self.needs_images()
        if images and featurizer is not None and not featurizer.supports_images:
            raise ConfigError(f"validation set(s) {images} embed images but the model is loaded without its vision "
                              "tower (model.text_only=true): set model.text_only=false, or pick text sets (val=stsb_dev)")
        for name, bench in self.benchmarks().items():
            try:
                bench.check()
            except (OSError, ValueError, KeyError) as err:
                if isinstance(err, DataConfigError):
                    raise
                raise DataConfigError(f"val.sets.{name}: cannot read it: {err}") from err
        self.setup()

    def setup(self) -> dict:
        if self.plans is None:
            self.plans = {name: entry["benchmark"].validation_plan(entry.get("limit"), self.seed)
                          for name, entry in self.sets.items()}
        return self.plans

    def dataloaders(self, featurizer) -> list[DataLoader]:
        plans = self.setup()
        return [DataLoader(sort_by_kind(plans[name].items), batch_size=int(self.sets[name].get("batch_size") or 32),
                           collate_fn=ValidationCollator(featurizer, self.on_error), num_workers=0)
                for name in self.names]


def sort_by_kind(items: list[dict]) -> list[dict]:
    """Items of one kind together (most batches then hold one kind: one forward each), ids kept."""
    return sorted(items, key=lambda item: (item["kind"], item["id"]))


class ValidationCollator:
    """Validation items -> {"groups": [{"kind", "inputs", "ids"}]}: one featurised group per kind in the batch.
    An unreadable image is skipped (on_error=skip: its id is absent, as the benchmark's run() skips it) or raised."""

    def __init__(self, featurizer, on_error: str = "skip"):
        self.featurizer, self.on_error = featurizer, on_error

    def __call__(self, items: list[dict]) -> dict:
        groups = []
        for kind in dict.fromkeys(item["kind"] for item in items):
            rows = [item for item in items if item["kind"] == kind]
            if kind == TEXT_KIND:
                inputs = self.featurizer.featurize_text([r["text"] for r in rows])
            else:
                loaded = [(r, load_image(r["image"], on_error=self.on_error)) for r in rows]
                rows = [r for r, image in loaded if image is not None]
                if not rows:
                    continue
                texts = [r["text"] for r in rows] if rows[0]["text"] is not None else None
                inputs = self.featurizer.featurize_images([im for _, im in loaded if im is not None], texts, kind=kind)
            groups.append({"kind": kind, "inputs": inputs, "ids": torch.tensor([r["id"] for r in rows])})
        return {"groups": groups}


class ValidationTables:
    """One `EmbeddingTable` per set during a validation epoch; `metrics()` gathers them across ranks and scores
    each set from its whole table: {"val/<set>/<metric>": value, plus each set's `log_as` names}. The gathered
    tables stay in `gathered` ({set: (ids, embeddings)}) for callbacks that draw them (lit.tensorboard_views)."""

    def __init__(self, sets: ValidationSets, device):
        from mmembed.metrics.table import EmbeddingTable

        self.sets = sets
        self.tables = [EmbeddingTable().to(device) for _ in sets.names]
        self.gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, dataloader_idx: int, groups: list[dict], embed) -> None:
        for group in groups:
            self.tables[dataloader_idx].update(group["ids"], embed(group["inputs"]))

    def metrics(self) -> dict[str, float]:
        plans, out = self.sets.setup(), {}
        for name, table in zip(self.sets.names, self.tables):
            if not table.update_called:
                continue
            ids, emb = table.compute()  # every rank's rows, one per id
            self.gathered[name] = (ids, emb)
            scores = plans[name].score(ids, emb)
            out.update({f"val/{name}/{metric}": float(value) for metric, value in scores.items()})
            out[f"val/{name}/inputs"] = float(ids.numel())
            for metric, key in self.sets.log_as(name).items():
                if metric in scores:  # a partial pass (fast_dev_run, sanity check) may score nothing complete
                    out[key] = float(scores[metric])
        return out


class TowerCacheDuringValidation:
    """A frozen vision tower's feature maps computed once per run for the validation images: an in-memory
    `TowerFeatureCache` routed in for validation only (training batches never fill it) and kept across
    validations. Nothing is done when the tower trains or a cache is already installed (model.vision_feature_cache)."""

    def __init__(self):
        self.cache, self.body = None, None

    def enter(self, model) -> None:
        from mmembed.models.vision_feature_cache import TowerFeatureCache, tower_body

        body = tower_body(model)
        if body is None or isinstance(body.get_vision_features, TowerFeatureCache):
            return
        if body.vision_tower.training or any(p.requires_grad for p in body.vision_tower.parameters()):
            return
        if self.cache is None or self.cache.tower is not body.vision_tower:
            self.cache = TowerFeatureCache(body, disk=False)
        self.body = body
        body.get_vision_features = self.cache  # an instance attribute: the class and state_dict are untouched

    def exit(self) -> None:
        if self.body is not None:
            del self.body.get_vision_features  # the class's method again
            self.body = None
