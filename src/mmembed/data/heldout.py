"""Evaluation sentences that training never sees, and the filter that keeps them out of training rows.

Text training files can hold evaluation sentences: SNLI's premises are Flickr30k captions, and the STS
sets reuse news, forum and caption sentences. With the shared data, 177 distinct sentences of the SNLI
triplets are Flickr8k 1k-test captions, 27 are STS-B test sentences and 44 are STS12 ones; 100 Flickr8k
training captions are STS-B test sentences (STS-B's caption genre). `heldout_sentences` reads the evaluation
sets listed in `conf/heldout/` (the same one-benchmark files as the suites) with the evaluation-set readers;
`drop_heldout_rows` drops every training row that holds one of them in any column (compared with case
and spacing folded; a cell that wraps one in an instruction, "...the given caption: <sentence>", holds it too) and logs how many went. These are not bad rows, so they are not counted in
`data/skipped`; the DataModule keeps the number (`heldout_dropped`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePath

from mmembed.data.evalsets.caption_splits import normalise_caption
from mmembed.errors import DataConfigError

log = logging.getLogger(__name__)

STS_FORMATS = ("sts12_16", "stsb", "sick")


def _settings(source) -> dict:
    """The fields of one source: a config mapping (conf/heldout: a one-benchmark file of conf/benchmark/, whose
    `_target_` is ignored here) or the benchmark object Hydra built from it (its attributes)."""
    return dict(source) if isinstance(source, Mapping) else dict(vars(source))


def _sentences_of(name: str, source: Mapping) -> Iterable[str]:
    """The sentences of an STS set (format sts12_16 / stsb / sick) or the captions of a caption file (a format
    of data.evalsets.captions), told apart by `format`."""
    from mmembed.data.evalsets.captions import CAPTION_FORMATS, read_caption_config
    from mmembed.data.evalsets.sts import read_sts_config

    fmt = source.get("format")
    if fmt in STS_FORMATS:
        subsets, _ = read_sts_config(source)
        return [s for pairs in subsets for s in pairs.sentences1 + pairs.sentences2]
    if fmt in CAPTION_FORMATS:
        # Every caption of the set's images, also those a validation set leaves out (captions_per_image: 1 scores
        # one caption per image; the other four still describe a held-out image).
        return read_caption_config(dict(source, name=name, captions_per_image=None), check_images=False).captions
    raise DataConfigError(f"heldout.sources.{name}: format {fmt!r} has no sentences to hold out (expected an STS "
                          f"format {STS_FORMATS} or a caption format {CAPTION_FORMATS})")


def heldout_sentences(sources: Mapping[str, Mapping] | None) -> frozenset[str]:
    """Every sentence of the named evaluation sets, case and spacing folded (`normalise_caption`).
    Only `format` and the files' settings are read (`_target_` and the benchmark's other settings are not)."""
    out: set[str] = set()
    for name, source in (sources or {}).items():
        if not source:  # `heldout.sources.<name>=null` leaves one set out
            continue
        try:
            out |= {normalise_caption(s) for s in _sentences_of(name, _settings(source))}
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, DataConfigError):
                raise
            raise DataConfigError(f"heldout.sources.{name}: cannot read it: {err}") from err
    return frozenset(out)


# Where an instruction ends and the sentence it wraps begins: MMEB's "Find me an everyday image that matches the
# given caption: <caption>", a question after a line break.
_SENTENCE_STARTS = re.compile(r":\s|\n")


def holds(text: str, heldout: frozenset[str]) -> bool:
    """The cell is a held-out sentence, or ends with one after an instruction (case and spacing folded)."""
    if normalise_caption(text) in heldout:
        return True
    return any(normalise_caption(text[m.end():]) in heldout for m in _SENTENCE_STARTS.finditer(text))


def drop_heldout_rows(rows, columns: list[str], heldout: frozenset[str]):
    """(`rows` without those holding a held-out sentence in any of `columns`, how many were dropped);
    `rows` is a `datasets.Dataset` (text pairs) or a list of dicts (image-caption rows), returned as such."""
    if not heldout or len(rows) == 0:
        return rows, 0
    is_dataset = hasattr(rows, "column_names")
    values = [rows[c] for c in columns] if is_dataset else [[r[c] for r in rows] for c in columns]
    hit = {i for i, row in enumerate(zip(*values)) if any(isinstance(v, str) and holds(v, heldout) for v in row)}
    if not hit:
        return rows, 0
    log.info("left out %d of %d training rows holding an evaluation sentence (conf/heldout)", len(hit), len(rows))
    keep = [i for i in range(len(rows)) if i not in hit]
    return (rows.select(keep) if is_dataset else [rows[i] for i in keep]), len(hit)


# Flickr's own file names: `<photo id>_<secret>` (Flickr8k); Flickr30K names the same photo `<photo id>.jpg`.
_FLICKR_NAME = re.compile(r"^(\d+)_[0-9a-f]{10}$")


def image_identity(path) -> str:
    """What makes two image files the same photo for leakage checks: the file stem, except that a Flickr8k name
    `<photo id>_<secret>` is its photo id, as Flickr30K names it (`1007129816_e794419615.jpg` and
    `1007129816.jpg` are one photo); COCO's zero-padded ids stay as they are."""
    stem = PurePath(str(path)).stem
    match = _FLICKR_NAME.match(stem)
    return match.group(1) if match else stem


def drop_heldout_images(rows, columns: list[str], heldout: frozenset[str]):
    """(`rows` without those whose image in any of `columns` is a held-out photo (`image_identity`), how many
    were dropped); `rows` as for `drop_heldout_rows`."""
    if not heldout or len(rows) == 0:
        return rows, 0
    is_dataset = hasattr(rows, "column_names")
    columns = [c for c in columns if (c in rows.column_names if is_dataset else c in rows[0])]
    values = [rows[c] for c in columns] if is_dataset else [[r[c] for r in rows] for c in columns]
    hit = {i for i, row in enumerate(zip(*values)) if any(v and image_identity(v) in heldout for v in row)}
    if not hit:
        return rows, 0
    log.info("left out %d of %d training rows whose image is a validation image (conf/val)", len(hit), len(rows))
    keep = [i for i in range(len(rows)) if i not in hit]
    return (rows.select(keep) if is_dataset else [rows[i] for i in keep]), len(hit)
