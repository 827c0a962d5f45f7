"""Image-caption training data: image <-> caption InfoNCE (`objective: contrastive`) or captioning
for projector alignment (`objective: captioning`). Sources and layouts: `mmembed.data.image_text`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mmembed.data.image_text import (
    CaptionCollator,
    ImageTextCollator,
    pairs_as_rows,
    read_image_text_sources,
)
from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.errors import DataConfigError
from mmembed.lit.datamodules import StsValidatedDataModule

OBJECTIVES = ("contrastive", "captioning")


class ImageTextDataModule(StsValidatedDataModule):
    """Image-caption pairs from `sources` (see `mmembed.data.image_text`), validated on STS-B dev."""

    def __init__(
        self,
        sources: Sequence[Mapping],
        objective: str = "contrastive",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise DataConfigError(f"data.objective={objective!r}: expected one of {OBJECTIVES}")
        self.sources = [dict(s) for s in sources]
        self.objective, self.max_pixels = objective, max_pixels
        self.featurize_images: Callable | None = None
        self.featurize_captions: Callable | None = None

    def bind_embedder(self, embedder, featurize_captions: Callable | None = None, **_) -> ImageTextDataModule:
        self.bind(embedder.featurize_text, embedder.backbone.tokenizer)
        self.featurize_images = embedder.featurize_images
        self.featurize_captions = featurize_captions
        return self

    def check_paths(self) -> None:
        for source in self.sources:
            for key in ("captions", "images", "file", "root"):
                value = source.get(key)
                if value and not Path(value).expanduser().exists():
                    raise DataConfigError(
                        f"data source {source.get('name') or source.get('format')!r}: {key}={value} does not exist. "
                        "Set the data root (env MMEMBED_DATA / paths.data_root) or data.sources"
                    )
        super().check_paths()

    def read_train_set(self) -> list[dict]:
        return pairs_as_rows(read_image_text_sources(self.sources))

    def train_collator(self) -> Callable:
        if self.objective == "captioning":
            if self.featurize_captions is None:
                raise DataConfigError("data.objective=captioning needs the captioning loss (loss=captioning)")
            return CaptionCollator(self.featurize_captions, self._truncate, self.on_error, self.max_pixels)
        return ImageTextCollator(self.featurize, self.featurize_images, self._truncate, self.on_error, self.max_pixels)
