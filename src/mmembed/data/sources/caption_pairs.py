"""Two captions of one image as a text pair: caption files (Flickr30K's 5 per image) as a text-only training source.

Rows are `text_pairs` {sent0, sent1, image} like NLI rows without a hard negative: in-batch InfoNCE takes the other
images' captions as the negatives. Two pairs of one image in one batch would be false negatives, so each image gives
ONE pair (two of its captions, picked by `pair_seed` and the image name alone, so a pair does not change when
other images are filtered), and a caption that several images share is dropped (it would be another image's
positive too). The `image` column (the caption file's image name) is not featurised: it lets the DataModule drop
the rows of validation images (`image_columns`), as for image-caption sources.

What never trains, counted in `counts` and logged: images outside `split` (Karpathy train), images of the
`heldout_images` lists (Flickr8k dev/test, Flickr30K test: matched as photos, `image_identity`, since every
Flickr8k image is a Flickr30K one), captions equal to a caption of those images, captions holding an evaluation
sentence (`data.heldout`: `read_rows` returns their number), and images left with fewer than two captions.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset

from mmembed.data.evalsets.caption_files import parse_caption_csv, parse_caption_json, parse_coco, parse_flickr8k_token
from mmembed.data.evalsets.caption_splits import normalise_caption, read_split_file
from mmembed.data.heldout import holds, image_identity
from mmembed.data.sources.text_pairs import TextPairRows
from mmembed.errors import DataConfigError, SkipCounter

log = logging.getLogger(__name__)

PARSERS = {"caption_json": parse_caption_json, "coco_json": parse_coco, "caption_csv": parse_caption_csv,
           "flickr8k_token": parse_flickr8k_token}


# what `counts` reports, in the order the rules apply (plus images_dropped_<list> per held-out list)
COUNTS = ("images", "images_not_in_split", "captions_repeated_for_an_image", "captions_of_heldout_images",
          "captions_heldout_sentences", "captions_of_several_images", "images_with_under_two_captions", "pairs")


class CaptionPairSource:
    """One (anchor, positive) caption pair per kept image of `captions` (format: a caption-file format of
    `mmembed.data.evalsets.caption_files`), in the file's image order."""

    row_kind = TextPairRows.row_kind
    image_columns = ("image",)  # rows whose image is a validation image are dropped (the DataModule)

    def __init__(self, captions: str, format: str = "caption_json", split: str | None = "train",
                 split_files: Mapping[str, str] | None = None, heldout_images: Mapping[str, str] | None = None,
                 pair_seed: int = 42):
        if format not in PARSERS:
            raise DataConfigError(f"data.format={format!r}: expected one of {sorted(PARSERS)}")
        if split and split not in (split_files or {}):
            raise DataConfigError(f"data.split={split!r} needs its image list in data.split_files "
                                  f"(has {sorted(split_files or {})})")
        self.captions, self.format, self.split = captions, format, split
        self.split_files, self.heldout_images = dict(split_files or {}), dict(heldout_images or {})
        self.pair_seed = int(pair_seed)
        self.counts: dict[str, int] = {}

    def check_paths(self) -> None:
        settings = [("captions", self.captions)]
        if self.split:
            settings.append((f"split_files.{self.split}", self.split_files[self.split]))
        settings += [(f"heldout_images.{k}", v) for k, v in self.heldout_images.items()]
        for key, path in settings:
            if not Path(str(path)).expanduser().is_file():
                raise DataConfigError(f"data.{key}={path} does not exist. Set the data root "
                                      f"(env MMEMBED_DATA / paths.data_root) or data.{key}")

    def read_rows(self, on_error: str, skips: SkipCounter, heldout: frozenset[str]):
        self.check_paths()
        _, captions, _ = PARSERS[self.format](Path(self.captions).expanduser(), "data.captions")
        by_image: dict[str, list[str]] = {}
        for image, caption in captions:
            if caption.strip():
                by_image.setdefault(image, []).append(caption)
        counts = Counter(dict.fromkeys(COUNTS, 0), images=len(by_image))
        # the held-out lists' photos, whatever split the caption file puts them in; the first list names the rule
        rule_of = {}
        for name, path in self.heldout_images.items():
            for image in read_split_file(path, f"data.heldout_images.{name}"):
                rule_of.setdefault(image_identity(image), name)
        held_captions = {normalise_caption(c) for image, caps in by_image.items() if image_identity(image) in rule_of
                         for c in caps}
        if self.split:
            members = {image_identity(i) for i in read_split_file(self.split_files[self.split], f"data.split_files.{self.split}")}
            counts["images_not_in_split"] = sum(image_identity(i) not in members for i in by_image)
            by_image = {i: caps for i, caps in by_image.items() if image_identity(i) in members}
        for name in self.heldout_images:
            counts[f"images_dropped_{name}"] = sum(rule_of.get(image_identity(i)) == name for i in by_image)
        by_image = {i: caps for i, caps in by_image.items() if image_identity(i) not in rule_of}
        by_image, evaluation = self._drop_captions(by_image, held_captions, heldout, counts)
        pairs = {i: random.Random(f"{self.pair_seed}:{i}").sample(caps, 2) for i, caps in by_image.items()
                 if len(caps) >= 2}
        counts["images_with_under_two_captions"] = len(by_image) - len(pairs)
        counts["pairs"] = len(pairs)
        dropped = [f"images_dropped_{name}" for name in self.heldout_images]
        self.counts = {k: counts[k] for k in (*COUNTS[:2], *dropped, *COUNTS[2:])}
        log.info("caption pairs %s: %s", self.captions, self.counts)
        if not pairs:
            raise DataConfigError(f"data.captions={self.captions}: no image of split {self.split!r} is left with two "
                                  f"captions ({self.counts})")
        images = list(pairs)
        return Dataset.from_dict({"sent0": [pairs[i][0] for i in images], "sent1": [pairs[i][1] for i in images],
                                  "image": images}), evaluation

    @staticmethod
    def _drop_captions(by_image, held_captions, heldout, counts):
        """Captions of held-out images, evaluation sentences and captions of several images, dropped and counted;
        returns the rest and how many held an evaluation sentence."""
        owners = Counter(c for caps in by_image.values() for c in {normalise_caption(x) for x in caps})
        out, evaluation = {}, 0
        for image, caps in by_image.items():
            kept, seen = [], set()
            for caption in caps:
                key = normalise_caption(caption)
                if key in seen:  # one sentence twice for one image: a pair of it would teach nothing
                    counts["captions_repeated_for_an_image"] += 1
                elif key in held_captions:
                    counts["captions_of_heldout_images"] += 1
                elif heldout and holds(caption, heldout):
                    evaluation += 1
                    counts["captions_heldout_sentences"] += 1
                elif owners[key] > 1:
                    counts["captions_of_several_images"] += 1
                else:
                    kept.append(caption)
                seen.add(key)
            out[image] = kept
        return out, evaluation

    def row_preparer(self, featurizer, max_text_tokens: int | None, on_error: str) -> TextPairRows:
        return TextPairRows(featurizer, max_text_tokens)
