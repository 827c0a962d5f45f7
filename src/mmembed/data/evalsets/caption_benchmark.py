"""`CaptionBenchmark`: unique images and the captions that point at them, and the views evaluation and validation
take of one (a subset of images, each image's first k captions, one joined text per image, a name-sorted slice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CaptionBenchmark:
    """Images and their captions; `caption_image[j]` is the index into `images` that caption j describes."""

    name: str
    images: list[Path]
    image_ids: list[str]
    captions: list[str]
    caption_image: list[int]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.captions) != len(self.caption_image) or len(self.images) != len(self.image_ids):
            raise ValueError(f"{self.name}: inconsistent lengths")
        if self.caption_image and not 0 <= min(self.caption_image) <= max(self.caption_image) < len(self.images):
            raise ValueError(f"{self.name}: caption points at no image")

    def subset(self, keep_images: list[int]) -> CaptionBenchmark:
        """Only the images at `keep_images` (e.g. those that could be read) and their captions."""
        remap = {old: new for new, old in enumerate(keep_images)}
        pairs = [(c, remap[i]) for c, i in zip(self.captions, self.caption_image) if i in remap]
        return CaptionBenchmark(
            self.name,
            [self.images[i] for i in keep_images],
            [self.image_ids[i] for i in keep_images],
            [c for c, _ in pairs],
            [i for _, i in pairs],
            dict(self.meta),
        )

    def first_captions(self, per_image: int) -> CaptionBenchmark:
        """Each image's first `per_image` captions in file order (e.g. 1: one query per image, a fifth of the
        text to embed; t2i stays 1 positive per query, i2t then has 1 positive per image)."""
        seen: dict[int, int] = {}
        keep = []
        for j, image in enumerate(self.caption_image):
            seen[image] = seen.get(image, 0) + 1
            if seen[image] <= per_image:
                keep.append(j)
        return CaptionBenchmark(self.name, list(self.images), list(self.image_ids), [self.captions[j] for j in keep],
                                [self.caption_image[j] for j in keep], {**self.meta, "captions_per_image": per_image})

    def joined(self, separator: str = " ") -> CaptionBenchmark:
        """One long text per image: its captions in file order, joined (MM-GEM's long-text retrieval; for
        Flickr8k five sentences, about 60 words). Images without a caption are dropped."""
        texts: dict[int, list[str]] = {}
        for caption, image in zip(self.captions, self.caption_image):
            texts.setdefault(image, []).append(caption.strip())
        keep = sorted(texts)
        out = self.subset(keep)
        out.captions = [separator.join(texts[i]) for i in keep]
        out.caption_image = list(range(len(keep)))
        out.meta["joined_captions"] = {"texts": len(keep), "captions_per_text": len(self.captions) / max(len(keep), 1)}
        return out

    def image_range(self, start: int | None, stop: int | None) -> CaptionBenchmark:
        """The images at positions [start, stop) of the *file-name-sorted* image list, and their captions.

        For a user's own caption file that has no official split: a fixed, order-independent slice.
        Flickr8k, COCO and Flickr30k have official splits (`split` + `split_files`, or Karpathy's `split`).
        """
        ordered = sorted(range(len(self.images)), key=lambda i: self.image_ids[i])
        keep = sorted(ordered[slice(start, stop)])
        out = self.subset(keep)
        out.meta["image_range"] = [start, stop]
        return out
