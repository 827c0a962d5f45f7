"""Which images of a caption file a source uses: official split files, image folders searched in order,
and Flickr8k's own caption file (`Flickr8k.token.txt`).

Flickr8k's split is three lists of file names (`Flickr_8k.{train,dev,test}Images.txt`) that hold for every
copy of its images, whatever folder (or resolution) they are in. A source names the split it uses, the
split files, and one or more image folders; each image is taken from the first folder that holds it, so a
user's full copy (one folder) and the shared data's two partial copies work with the same settings.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mmembed.data.evalsets.layout import require
from mmembed.errors import DataConfigError

log = logging.getLogger(__name__)

TOKEN_LAYOUT = """
<captions>: Flickr8k.token.txt, one "<file name>#<0-4><TAB><caption>" line per caption
<images>/<file name> for every image named (several folders: the first that holds it)
"""
SPLIT_HELP = (
    "set `split_files: {train: .../Flickr_8k.trainImages.txt, dev: ..., test: ...}` and `split: <one of them>` "
    "(or `split_file: <one list of file names>`)"
)

# `<name>.<image suffix>#<n><TAB><caption>`: the official file's bogus `2258277193_586949ec62.jpg.1#0`
# (a duplicate of that image's first caption) has no image suffix, so it is skipped, not looked for.
_TOKEN_LINE = re.compile(r"^(?P<file>[^\t#]+\.(?:jpe?g|png|webp|bmp|gif))#\d+\t(?P<caption>.*\S.*)$", re.IGNORECASE)


def read_token_file(path: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Image names (first-appearance order), (name, caption) per well-formed line, and the skipped lines."""
    ordered, seen, captions, skipped = [], set(), [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            match = _TOKEN_LINE.match(line)
            if match is None:
                skipped.append(line)
                continue
            name = match["file"].strip()
            if name not in seen:
                seen.add(name)
                ordered.append(name)
            captions.append((name, match["caption"].strip()))
    if skipped:
        log.info("%s: skipped %d line(s) not of the form <file>#<n><TAB><caption>, e.g. %r",
                    path, len(skipped), skipped[0][:80])
    return ordered, captions, skipped


def read_split_file(path: str | Path, name: str) -> list[str]:
    """One image file name a line (blank lines ignored), as Flickr8k's `Flickr_8k.*Images.txt`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataConfigError(f"{name}: split file {path} not found; {SPLIT_HELP}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _key(image: str) -> str:
    return Path(image).name  # split files list bare file names; Karpathy-style paths match by their last part


def captions_of_splits(captions: list[tuple[str, str]], splits: list[set[str]]) -> set[str]:
    """The normalised captions of every image in one of `splits` (sets of file names)."""
    return {normalise_caption(cap) for img, cap in captions if any(_key(img) in members for members in splits)}


_PUNCTUATION = re.compile(r"[^\w\s]")


def normalise_caption(caption: str) -> str:
    """Case, spacing and punctuation folded: `A dog runs .`, `a dog  runs.` and `A dog runs` are one sentence for
    leakage checks (Flickr8k writes ` .`, SNLI `.`, STS-B sometimes none: 26 more SNLI triplets hold an evaluation
    sentence than case and spacing alone find)."""
    return " ".join(_PUNCTUATION.sub(" ", caption.lower()).split())


def select_split(name: str, captions: list[tuple[str, str]], cfg: Mapping) -> tuple[list[tuple[str, str]], dict]:
    """The (image, caption) pairs of `cfg["split"]`'s images, minus the captions shared with `heldout_splits`.

    Lines whose image is in no split file are dropped and counted (Flickr8k: 91 images, and the name
    2258277193_586949ec62.jpg that has no image); lines of the other splits are dropped without a count.
    Returns the kept pairs and what was done, for the protocol (`meta`).
    """
    split, files, single = cfg.get("split"), cfg.get("split_files"), cfg.get("split_file")
    heldout = list(cfg.get("heldout_splits") or [])
    if files and single:
        raise DataConfigError(f"{name}: set either split_files or split_file, not both")
    if single:
        files = {split or "selected": single}
        split = split or "selected"
    if not files:
        raise DataConfigError(f"{name}: split={split!r} needs its list of images: {SPLIT_HELP}")
    if split not in files:
        raise DataConfigError(f"{name}: split={split!r} is not one of split_files {sorted(files)}")
    unknown = [s for s in heldout if s not in files or s == split]
    if unknown:
        raise DataConfigError(f"{name}: heldout_splits {unknown} must name other splits of {sorted(files)}")
    members = {s: set(read_split_file(path, name)) for s, path in files.items()}
    chosen, anywhere = members[split], set().union(*members.values())
    kept = [(img, cap) for img, cap in captions if _key(img) in chosen]
    in_no_split = sum(_key(img) not in anywhere for img, _ in captions)
    held_captions = captions_of_splits(captions, [members[s] for s in heldout])
    before = len(kept)
    kept = [(img, cap) for img, cap in kept if normalise_caption(cap) not in held_captions]
    with_captions = {_key(img) for img, _ in kept}
    meta = {
        "split": split,
        "split_file": str(files[split]),
        "split_images": len(chosen),
        "caption_lines_in_no_split": in_no_split,
        "split_images_without_captions": len(chosen - {_key(img) for img, _ in captions}),
    }
    if heldout:
        meta["heldout_splits"] = heldout
        meta["captions_dropped_as_heldout"] = before - len(kept)
    log.info("%s: split %r: %d of %d listed images have captions; %d caption line(s) in no split ignored%s",
             name, split, len(with_captions), len(chosen), in_no_split,
             f"; {before - len(kept)} caption(s) also describing a {'/'.join(heldout)} image dropped" if heldout else "")
    return kept, meta


def image_folders(name: str, images, layout: str) -> list[Path]:
    """`images` as a list of existing folders (one path or a list, searched in order)."""
    if not images:
        raise DataConfigError(f"{name}: missing setting `images` (an image folder or a list of folders)")
    folders = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    folders = [Path(folder).expanduser() for folder in folders]
    for folder in folders:
        require(name, folder, [], layout)
    return folders


def locate_images(names: Iterable[str], folders: list[Path], search: bool = True) -> dict[str, Path | None]:
    """Each image's path in the first folder that holds it; None where no folder does.

    `search=False` (one folder, nothing to decide) stats no file: every image is placed in that folder and the
    image loader reports a missing one under its `on_error` policy.
    """
    if not search and len(folders) == 1:
        return {img: folders[0] / img for img in names}
    return {img: next((folder / img for folder in folders if (folder / img).is_file()), None) for img in names}
