"""Captioning scores with pycocoevalcap: BLEU-1..4 and CIDEr always, METEOR and SPICE when Java can run them.

COCO's protocol: every caption (prediction and references) is lowercased, PTB-tokenised and stripped
of punctuation, then scored against ALL references of its image. Scores are x100 (BLEU-4 36.2,
CIDEr 120.5), the way papers print them. CIDEr's idf comes from the references of the scored set
itself, so score a whole test split at once (a single image gives CIDEr 0: every n-gram has idf 0).

Tokenisation (`tokenizer=`): "ptb" runs pycocoevalcap's Stanford PTBTokenizer (needs `java`);
"simple" is `simple_tokenize`, a pure-python approximation of it (its output equals the PTB pipeline's
on all 40,460 official Flickr8k captions and the 400 COCO captions in the shared data; rarer constructs
may differ, see tests/metrics/test_captioning_metrics.py); "auto" (default) uses PTB when
`java` is on PATH and falls back to "simple" otherwise. The result says which one ran.
METEOR 1.5 and SPICE shell out to Java: they run when `java_scorers` is on and `java` is on PATH;
SPICE also needs the Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads on first use
(no download is attempted here). Each scorer that did not run is listed under "skipped" with why.
METEOR's JVM loads a 60 MB paraphrase table on every call: slow on a small CPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from mmembed.errors import ConfigError, DataConfigError

TOKENIZERS = ("auto", "ptb", "simple")
# pycocoevalcap drops these tokens after PTB tokenisation; its -LRB- style entries are upper case while
# `-lowerCase` output is lower case, so "-lrb-" etc. survive in the official pipeline (mirrored below)
PTB_PUNCTUATION = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = r"'(?:s|re|ve|ll|d|m)(?![a-z])"
_TOKEN = re.compile(
    "|".join(
        [
            r"(?:[a-z]\.){2,}|(?:mrs?|ms|dr|jr|sr|st|[a-z])\.(?=\s)",  # abbreviations keep their dot: u.s., mr., u.
            r"n't|'n'|" + _CLITIC,  # clitics split off as PTB does: is n't, dog 's, slip 'n' slide
            r"[a-z0-9]+(?:[-./][a-z0-9]+|(?!" + _CLITIC + r")'[a-z]+)*",  # words: t-shirt, 3.5, o'clock
            r"\.\.\.|--|\S",  # anything else, one character at a time (at&t -> at & t)
        ]
    )
)


def simple_tokenize(text: str) -> str:
    """Lowercase, PTB-style split, punctuation tokens dropped; tokens joined by single spaces.

    "A dog's ball, isn't it?" -> "a dog 's ball is n't it". Brackets become -lrb- / -rrb- (kept, as in
    the official PTB pipeline); double quotes are dropped like PTB's `` and ''.
    """
    text = re.sub(r"n't(?![a-z])", " n't", text.lower()).replace('"', " ")
    text = re.sub(r"\bcannot\b", "can not", text)
    tokens = (BRACKETS.get(token, token) for token in _TOKEN.findall(text))
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)


def _java() -> str | None:
    return shutil.which("java")


def _check(predictions: Mapping, references: Mapping) -> None:
    if not predictions:
        raise DataConfigError("caption_scores: no predictions to score")
    missing = [key for key in predictions if key not in references]
    unpredicted = [key for key in references if key not in predictions]
    if missing or unpredicted:
        raise DataConfigError(
            f"caption_scores: predictions and references must cover the same ids; {len(missing)} predicted id(s) "
            f"have no references (first: {missing[:5]}), {len(unpredicted)} referenced id(s) have no prediction "
            f"(first: {unpredicted[:5]})"
        )
    for key, refs in references.items():
        if (
            isinstance(refs, str)
            or not isinstance(refs, Sequence)
            or not refs
            or not all(isinstance(r, str) for r in refs)
        ):
            raise DataConfigError(
                f"caption_scores: references[{key!r}] must be a non-empty list of strings, got {refs!r}"
            )
        if not isinstance(predictions[key], str):
            raise DataConfigError(f"caption_scores: predictions[{key!r}] must be a string, got {predictions[key]!r}")


def _tokenize(captions: dict[int, list[str]], tokenizer: str, notes: list[str]) -> tuple[dict[int, list[str]], str]:
    if tokenizer == "ptb" or (tokenizer == "auto" and _java()):
        if not _java():
            raise ConfigError("caption_scores(tokenizer='ptb') needs `java` on PATH; use tokenizer='simple' or 'auto'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        try:
            tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
            if {k: len(v) for k, v in tokenized.items()} != {k: len(v) for k, v in captions.items()}:
                raise ValueError("the Java tokenizer returned fewer lines than it was given")
            return tokenized, "ptb"
        except (OSError, ValueError) as error:  # e.g. its temp file cannot be written beside the jar
            if tokenizer == "ptb":
                raise
            notes.append(f"PTB tokenizer failed ({error}); used the simple tokenizer")
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}, "simple"


def _spice_missing_jars() -> str | None:
    from pycocoevalcap.spice import spice

    lib = Path(spice.__file__).parent / "lib"
    wanted = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    absent = [p.name for p in wanted if not p.is_file()]
    return f"needs {', '.join(absent)} in {lib} (pycocoevalcap downloads them on first use)" if absent else None


def _java_scores(gts, res, enabled: bool, scores: dict, skipped: dict) -> None:
    """METEOR and SPICE, each only when it can run; failures are reported, never fatal."""
    if not enabled or not _java():
        reason = "disabled (java_scorers=False)" if not enabled else "needs `java` on PATH"
        skipped.update(METEOR=reason, SPICE=reason)
        return
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()
        scores["METEOR"] = 100 * float(meteor.compute_score(gts, res)[0])
        del meteor  # its __del__ stops the JVM
    except (OSError, ValueError) as error:
        skipped["METEOR"] = f"failed: {error}"
    missing = _spice_missing_jars()
    if missing:
        skipped["SPICE"] = missing
        return
    from pycocoevalcap.spice.spice import Spice

    try:
        scores["SPICE"] = 100 * float(Spice().compute_score(gts, res)[0])
    except (OSError, ValueError, subprocess.SubprocessError) as error:  # a JVM error or an unreadable result
        skipped["SPICE"] = f"failed: {error}"


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenizer: str = "auto",
    java_scorers: bool = True,
) -> dict:
    """Corpus-level scores of one predicted caption per id against that id's reference captions.

    Returns {"BLEU-1".."BLEU-4", "CIDEr", and "METEOR"/"SPICE" when they ran: floats x100;
    "scorers": the scorers that ran ("BLEU", "CIDEr", "METEOR", "SPICE"), "skipped": {name: why}, "tokenizer": "ptb" or "simple",
    "num_images": the number of ids, "notes": anything else worth knowing}.
    """
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"caption_scores tokenizer={tokenizer!r}: expected one of {TOKENIZERS}")
    _check(predictions, references)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    keys = list(predictions)  # scorers get dense int ids (SPICE writes them to JSON)
    notes: list[str] = []
    gts, used = _tokenize({i: list(references[key]) for i, key in enumerate(keys)}, tokenizer, notes)
    res, _ = _tokenize({i: [predictions[key]] for i, key in enumerate(keys)}, used, notes)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": 100 * float(value) for n, value in enumerate(bleu, start=1)}
    scores["CIDEr"] = 100 * float(Cider().compute_score(gts, res)[0])
    skipped: dict[str, str] = {}
    _java_scores(gts, res, java_scorers, scores, skipped)
    names = ["BLEU", "CIDEr"] + [name for name in ("METEOR", "SPICE") if name in scores]
    return {**scores, "scorers": names, "skipped": skipped, "tokenizer": used, "num_images": len(keys), "notes": notes}
