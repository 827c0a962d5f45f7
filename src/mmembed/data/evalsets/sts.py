"""STS readers (SentEval's formats, read as SentEval reads them): STS12-16, STS-Benchmark, SICK-R.

Sentences are whitespace-normalised (`" ".join(s.split())`), as SentEval's loaders split them into
tokens and SimCSE/E5-V's batcher joins them back with single spaces.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.evalsets.layout import BenchmarkLayoutError, require

STSB_LAYOUT = """
<folder>/sts-train.csv, sts-dev.csv, sts-test.csv   (STSBenchmark, tab separated:
    genre, file, year, id, score, sentence1, sentence2[, extra columns])
"""
STS12_16_LAYOUT = """
<folder>/STS.input.<subset>.txt   two tab-separated sentences per line (STS2016.input.<subset>.txt for STS16)
<folder>/STS.gs.<subset>.txt      one gold score per line (empty = unscored, dropped)
"""
SICK_LAYOUT = """
<file>: SICK_test_annotated.txt or SICK.txt, tab separated with a header naming
    sentence_A, sentence_B, relatedness_score [, SemEval_set]
"""


@dataclass
class STSPairs:
    """Sentence pairs with gold similarity scores."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not len(self.sentences1) == len(self.sentences2) == len(self.scores):
            raise ValueError(
                f"{self.name}: {len(self.sentences1)} / {len(self.sentences2)} sentences and {len(self.scores)} scores"
            )
        # Gold scores are on the 0-5 scale (SICK: 1-5); anything else is a corrupt file, and one NaN
        # would silently turn the whole Spearman into NaN.
        bad = [i for i, v in enumerate(self.scores) if not (math.isfinite(v) and 0.0 <= v <= 5.0)]
        if bad:
            where = self.meta.get("path", self.name)
            raise ValueError(f"{where}: gold score {self.scores[bad[0]]!r} of pair {bad[0]} is not a number in [0, 5]")

    def __len__(self) -> int:
        return len(self.scores)


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


def read_stsb(folder: str | Path, split: str = "test") -> STSPairs:
    """STSBenchmark `sts-<split>.csv`: score in column 4, sentences in columns 5 and 6.

    Some lines of the original release carry extra trailing columns (source annotations); they are ignored.
    Quotes are literal text (csv.QUOTE_NONE).
    """
    if split not in ("train", "dev", "test"):
        raise ValueError(f"STS-B split must be train, dev or test, not {split!r}")
    name = f"sts-{split}.csv"
    path = require("STS-B", folder, [name], STSB_LAYOUT) / name
    s1, s2, scores = [], [], []
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 7:
                raise ValueError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(row)}")
            scores.append(float(row[4]))
            s1.append(_norm(row[5]))
            s2.append(_norm(row[6]))
    return STSPairs(f"STSB-{split}", s1, s2, scores, {"path": str(path), "split": split})


def sts12_16_subsets(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(subset name, input file, gold file) for every `*.input.<subset>.txt` in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkLayoutError("STS12-16", folder, STS12_16_LAYOUT, [folder])
    found, missing = [], []
    for inp in sorted(folder.glob("*.input.*.txt")):
        gold = inp.with_name(inp.name.replace(".input.", ".gs.", 1))
        subset = inp.name.split(".input.", 1)[1][: -len(".txt")]
        (found if gold.is_file() else missing).append((subset, inp, gold))
    if missing or not found:
        raise BenchmarkLayoutError(
            "STS12-16", folder, STS12_16_LAYOUT, [g.name for _, _, g in missing] or ["STS.input.<subset>.txt"]
        )
    return found


def read_sts12_16(folder: str | Path) -> list[STSPairs]:
    """One `STSPairs` per sub-file of a SemEval STS year folder (e.g. STS12-en-test); unscored lines dropped."""
    out = []
    year = Path(folder).name
    for subset, inp, gold in sts12_16_subsets(folder):
        lines = inp.read_text(encoding="utf-8").splitlines()
        golds = gold.read_text(encoding="utf-8").splitlines()
        if len(golds) > len(lines):
            raise ValueError(f"{gold}: {len(golds)} scores for {len(lines)} sentence pairs in {inp}")
        golds += [""] * (len(lines) - len(golds))  # a missing trailing score means unscored
        s1, s2, scores = [], [], []
        for lineno, (line, score) in enumerate(zip(lines, golds), 1):
            if not score.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                raise ValueError(f"{inp}:{lineno}: expected two tab-separated sentences")
            s1.append(_norm(cols[0]))
            s2.append(_norm(cols[1]))
            scores.append(float(score))
        out.append(STSPairs(f"{year}/{subset}", s1, s2, scores, {"path": str(inp), "subset": subset}))
    return out


def read_sick(file: str | Path, split: str = "TEST") -> STSPairs:
    """SICK relatedness pairs. With a `SemEval_set` column (the full SICK.txt) keep rows of `split`
    (TRAIN / TRIAL / TEST); files without it (SICK_test_annotated.txt) are taken whole."""
    file = Path(file)
    if not file.is_file():
        raise BenchmarkLayoutError("SICK-R", file, SICK_LAYOUT, [file])
    with file.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0] if rows else []
    needed = ("sentence_A", "sentence_B", "relatedness_score")
    if any(col not in header for col in needed):
        raise BenchmarkLayoutError("SICK-R", file, SICK_LAYOUT, [c for c in needed if c not in header])
    ia, ib, isc = (header.index(c) for c in needed)
    iset = header.index("SemEval_set") if "SemEval_set" in header else None
    s1, s2, scores = [], [], []
    for row in rows[1:]:
        if not row or (iset is not None and row[iset].strip().upper() != split.upper()):
            continue
        s1.append(_norm(row[ia]))
        s2.append(_norm(row[ib]))
        scores.append(float(row[isc]))
    return STSPairs(f"SICK-R-{split.lower()}", s1, s2, scores, {"path": str(file), "split": split})


def read_sts_config(cfg) -> tuple[list[STSPairs], str]:
    """(list of STSPairs, description of the setting) for an STS benchmark config mapping:
    `format` (sts12_16 / stsb / sick), `path`, and `split` for stsb (default test) and sick (TEST)."""
    fmt, path = cfg.get("format"), cfg.get("path")
    if not fmt or not path:
        raise ValueError(f"an STS benchmark needs `format` and `path`, got {dict(cfg)}")
    if fmt == "sts12_16":
        return read_sts12_16(path), "all: Spearman over the pooled sub-files (SentEval 'all'); per sub-file also given"
    if fmt == "stsb":
        split = cfg.get("split") or "test"
        return [read_stsb(path, split)], f"split {split}"
    if fmt == "sick":
        split = cfg.get("split") or "TEST"
        return [read_sick(path, split)], f"split {split}"
    raise ValueError(f"unknown STS format {fmt!r}; expected sts12_16, stsb or sick")
