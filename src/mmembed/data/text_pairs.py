"""SimCSE-format text pairs (`sent0,sent1[,hard_neg]`) read with `datasets` (the source and its row preparer:
`mmembed.data.sources.text_pairs`).

Works unchanged on SimCSE's `nli_for_simcse.csv` (275k triplets) and on the SNLI triplets in the
shared data folder; csv / tsv / json / jsonl / parquet files, or a hub dataset id where a hub is reachable.

Bad input follows `data.on_error` (see `mmembed.errors` and docs/reliability.md):
- a row whose anchor, positive or hard negative is missing, empty/blank, NaN or not a string is
  skipped and counted (`skip`) or raises naming the file and row (`raise`);
- CSV cells are always text: "NA", "null", "nan", "None" are sentences, not missing values; only
  an empty cell is missing;
- bytes that are not UTF-8: `raise` -> error naming the file, byte offset and line; `skip` (CSV/TSV
  only) -> the file is decoded with U+FFFD replacement and every row holding a replacement
  character is skipped and counted as "invalid UTF-8". JSON files must be valid UTF-8 (error);
- missing columns, or a file pandas/pyarrow cannot parse (e.g. a line with too many fields): error naming the file;
- texts longer than `max_text_tokens` are cut at collate time and counted in `batch["truncated"]`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from mmembed.errors import DataConfigError, SkipCounter, check_on_error

log = logging.getLogger(__name__)

__all__ = ["DataConfigError", "load_text_pairs", "first_invalid_utf8"]

ANCHOR, POSITIVE, HARD_NEGATIVE = "sent0", "sent1", "hard_neg"
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
REPLACEMENT = "\ufffd"


def load_text_pairs(
    files: str | Sequence[str], split: str = "train", on_error: str = "skip", skips: SkipCounter | None = None
):
    """Load SimCSE-style pairs into a `datasets.Dataset` with columns sent0, sent1 (, hard_neg).

    Skipped rows are logged and added to `skips` (reasons "empty or missing text", "invalid UTF-8").
    """
    import datasets

    check_on_error(on_error)
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise DataConfigError("data.train_files is empty")
    local = [Path(f).expanduser() for f in files]
    replaced = False
    if all(p.suffix in _BUILDERS for p in local):
        missing = [str(p) for p in local if not p.is_file()]
        if missing:
            raise DataConfigError(
                f"training file(s) not found: {missing}. Set data.train_files, or the data root "
                "(env MMEMBED_DATA / paths.data_root) so it points at the folder holding them"
            )
        suffixes = {p.suffix for p in local}
        if len({_BUILDERS[s] for s in suffixes}) > 1 or suffixes == {".csv", ".tsv"}:
            raise DataConfigError(f"data.train_files mixes file formats {sorted(suffixes)}: {files}")
        replaced = _check_encoding(local, on_error)
        builder = _BUILDERS[local[0].suffix]
        kwargs = _csv_options(local, replaced) if builder == "csv" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=[str(p) for p in local], split=split, **kwargs)
        except Exception as err:  # pandas / pyarrow parse errors surface wrapped in DatasetGenerationError
            cause = err.__cause__ or err
            if not isinstance(cause, (ValueError, csv.Error)):  # pandas ParserError, ArrowInvalid, bad bytes
                raise  # not the file's content (out of memory, a datasets bug): keep the whole traceback
            log.debug("parsing %s as %s failed", files, builder, exc_info=True)
            raise DataConfigError(f"cannot parse {files} as {builder}: {type(cause).__name__}: {cause}") from err
    elif len(files) == 1:
        ds = datasets.load_dataset(files[0], split=split)  # a hub dataset id
    else:
        raise DataConfigError(f"data.train_files mixes local files and hub ids: {files}")
    columns = set(ds.column_names)
    if not {ANCHOR, POSITIVE} <= columns:
        raise DataConfigError(
            f"{files}: expected columns {ANCHOR},{POSITIVE}[,{HARD_NEGATIVE}] (SimCSE format), found {sorted(columns)}"
        )
    keep = [c for c in (ANCHOR, POSITIVE, HARD_NEGATIVE) if c in columns]
    ds = ds.select_columns(keep)
    return _drop_bad_rows(ds, keep, on_error, files, replaced, skips)


def _csv_options(files: list[Path], replaced: bool) -> dict:
    """Every column read as a string; only an empty cell is missing ("NA", "null", "nan" are texts)."""
    import datasets

    delimiter = "\t" if files[0].suffix == ".tsv" else ","
    with open(files[0], encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    options = {"delimiter": delimiter, "keep_default_na": False, "na_values": [""]}
    if header and len(set(header)) == len(header):
        options["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    if replaced:
        options["encoding_errors"] = "replace"
    return options


def _check_encoding(files: list[Path], on_error: str) -> bool:
    """True when some CSV/TSV file is not UTF-8 and on_error=skip (decode with replacement)."""
    replaced = False
    for path in files:
        if path.suffix not in _TEXT_SUFFIXES:
            continue
        bad = first_invalid_utf8(path)
        if bad is None:
            continue
        offset, line = bad
        where = f"{path}: not valid UTF-8 at byte {offset} (line {line})"
        if on_error == "raise":
            raise DataConfigError(f"{where}; re-save it as UTF-8, or set data.on_error=skip to drop the rows holding such bytes")
        if path.suffix in (".json", ".jsonl"):
            raise DataConfigError(f"{where}; JSON training files must be UTF-8 (re-save the file as UTF-8)")
        log.warning("%s; decoding with replacement and skipping the rows holding such bytes", where)
        replaced = True
    return replaced


def first_invalid_utf8(path: str | Path, chunk_size: int = 1 << 22) -> tuple[int, int] | None:
    """(byte offset, 1-based line) of the first byte sequence that is not UTF-8, or None; reads in chunks."""
    offset, lines, carry = 0, 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            data, last = carry + block, not block
            try:
                data.decode("utf-8")
                good = len(data)
            except UnicodeDecodeError as err:
                # An incomplete sequence at the end of a chunk may continue in the next one.
                if not last and err.reason == "unexpected end of data" and err.start >= len(data) - 3:
                    good = err.start
                else:
                    return offset + err.start, lines + data.count(b"\n", 0, err.start) + 1
            lines += data.count(b"\n", 0, good)
            offset += good
            carry = data[good:]
            if last:
                return None


def _drop_bad_rows(ds, columns, on_error: str, files, replaced: bool, skips: SkipCounter | None):
    def reason(row_values) -> str | None:
        for value in row_values:
            if not isinstance(value, str) or not value.strip():  # None, NaN (float), numbers, "", "  "
                return "empty or missing text"
        if replaced and any(REPLACEMENT in v for v in row_values):
            return "invalid UTF-8"
        return None

    values = [ds[c] for c in columns]
    bad = [(i, r) for i, row in enumerate(zip(*values)) if (r := reason(row)) is not None]
    if bad and on_error == "raise":
        i, why = bad[0]
        raise DataConfigError(f"{files}: row {i} has an {why}: {ds[i]} (data.on_error=skip skips and counts such rows)")
    if bad:
        if skips is not None:
            for i, why in bad:
                skips.add(f"row {i}", why)
        log.warning(
            "skipped %d of %d text pairs (%s; first rows: %s)",
            len(bad), len(ds), ", ".join(sorted({w for _, w in bad})), [i for i, _ in bad[:5]],
        )
        dropped = {i for i, _ in bad}
        ds = ds.select([i for i in range(len(ds)) if i not in dropped])
    return ds
