"""What the command lines read and run: the corpus behind src/embed.py (Hydra; see conf/embed.yaml),
and src/search.py and src/export.py (argparse). See docs/inference.md."""

from __future__ import annotations

import argparse
import codecs
import csv as csv_module
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mmembed.data.images import IMAGE_EXTENSIONS, is_image_file
from mmembed.errors import ConfigError, DataConfigError, MMEmbedError


class UsageError(MMEmbedError, ValueError):
    """Bad command-line input; reported without a traceback."""


# ---- the corpus src/embed.py embeds ----
@dataclass
class Corpus:
    """The inputs of one embedding run, in a fixed order; rows[i] describes items[i] (no ids: those are positions)."""

    modality: str  # "image" or "text"
    items: list[str]  # image paths or texts
    rows: list[dict]  # {"path"} | {"line", "text"} | {"row", "text", "fields"}
    source: str


def read_corpus(
    images: str | None = None,
    texts: str | None = None,
    csv: str | None = None,
    column: str = "caption",
    delimiter: str = ",",
    encoding: str = "utf-8",
) -> Corpus:
    """The corpus named by exactly one of `input.images` (a folder), `input.texts` (one text per line) or
    `input.csv` (a CSV with a header row; embeds `column`). Image files are listed here, decoded later."""
    given = [name for name, value in (("images", images), ("texts", texts), ("csv", csv)) if value]
    if len(given) != 1:
        raise ConfigError(
            f"set exactly one of input.images=FOLDER, input.texts=FILE or input.csv=FILE (got {given or 'none'})"
        )
    if images:
        folder = Path(images)
        if not folder.is_dir():
            raise DataConfigError(f"input.images={folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
        if not paths:
            raise DataConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under input.images={folder}")
        return Corpus("image", [str(p) for p in paths], [{"path": str(p.resolve())} for p in paths], str(folder.resolve()))
    path = Path(texts or csv)
    setting = "input.texts" if texts else "input.csv"
    if not path.is_file():
        raise DataConfigError(f"{setting}={path}: no such file")
    if texts:
        # One text per line (\n, \r\n or \r end a line); blank lines are skipped but keep their numbers.
        content = _decode(path, encoding, setting, newline=None)
        lines = [(n, line) for n, line in enumerate(content.split("\n"), 1) if line.strip()]
        rows = [{"line": n, "text": line} for n, line in lines]
        return Corpus("text", [line for _, line in lines], rows, str(path.resolve()))
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    content = _decode(path, encoding, setting, newline="")  # the csv module handles line ends itself
    reader = csv_module.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    if column not in (reader.fieldnames or []):
        raise DataConfigError(f"{path} has no column {column!r} (input.column); columns: {reader.fieldnames}")
    table = list(reader)
    rows = [{"row": n, "text": r[column] or "", "fields": r} for n, r in enumerate(table)]
    return Corpus("text", [row["text"] for row in rows], rows, str(path.resolve()))


def _decode(path: Path, encoding: str, setting: str, newline: str | None) -> str:
    """The file's text. Not UTF-8 (the default) -> one error naming the file and the first bad byte."""
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise ConfigError(f"input.encoding={encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from err
    if codecs.lookup(encoding).name == "utf-8":
        from mmembed.data.text_pairs import first_invalid_utf8

        bad = first_invalid_utf8(path)
        if bad is not None:
            raise DataConfigError(
                f"{setting}={path} is not valid UTF-8: byte offset {bad[0]} (line {bad[1]}); re-save it as UTF-8, "
                "or name its encoding with input.encoding=... (e.g. latin-1, cp1252)"
            )
        encoding = "utf-8-sig"  # a leading byte-order mark is not part of the first text
    try:
        with open(path, encoding=encoding, newline=newline) as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise DataConfigError(
            f"{setting}={path} is not valid {encoding}: byte offset {err.start} ({err.reason}); fix input.encoding"
        ) from err


# ---- search and export (argparse) ----
def _model_args(parser: argparse.ArgumentParser, default: str | None = "default") -> None:
    parser.add_argument("--model", default=default, help="'default', a hub id or a model folder")
    parser.add_argument("--adapter", help="a LoRA adapter folder (e.g. <run>/adapters/last)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: bfloat16 (vision in float32) on CPUs with native bf16, else float32")


def _run(main, argv) -> int:
    try:
        main(argv)
    except MMEmbedError as err:  # a setting or file to fix: one line. Anything else keeps its traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
def search_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="search.py", description="Search an index with a text, an image, or image + edit.")
    parser.add_argument("--index", required=True)
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image")
    parser.add_argument("--edit", help="with --image: a modification text (composed query, cir_query prompt)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--backend", default="auto", choices=("auto", "exact", "faiss"))
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--truncate-dim", type=int,
                        help="Matryoshka size of the query vectors (default: the index's own truncate_dim, if any)")
    _model_args(parser, default=None)
    args = parser.parse_args(argv)
    if args.edit and not args.image:
        raise UsageError("--edit modifies an image query: pass --image too")
    from mmembed.inference.embedder import Embedder
    from mmembed.inference.index import check_query_dim, load_index

    index = load_index(args.index)
    saved_path = index.info.get("model_path")
    model = args.model or (saved_path if saved_path and Path(saved_path).is_dir() else index.info["model"])
    adapter = args.adapter if args.model else (args.adapter or index.info.get("adapter"))
    truncate_dim = args.truncate_dim if args.truncate_dim is not None else index.info.get("truncate_dim")
    embedder = Embedder.from_pretrained(
        model, adapter=adapter, device=args.device, dtype=args.dtype, prompts=index.info.get("prompt_config"),
        truncate_dim=truncate_dim,
    )
    check_query_dim(embedder.dim, index.vectors.shape[1], index.info)  # before embedding anything
    if args.text is not None:
        query, desc = embedder.encode(texts=[args.text]), args.text
    elif args.edit:
        query, desc = embedder.encode(composed=[(args.image, args.edit)]), f"{args.image} + {args.edit!r}"
    else:
        query, desc = embedder.encode(images=[args.image]), args.image
    scores, ids = index.search(query, k=args.k, backend=args.backend)
    # An approximate FAISS index (ivf, hnsw) marks 'fewer than k found' with id -1.
    hits = [(float(s), index.metadata[int(i)]) for s, i in zip(scores[0], ids[0]) if int(i) >= 0]
    if args.json:
        for rank, (score, row) in enumerate(hits, 1):
            print(json.dumps({"rank": rank, "score": round(score, 6), **row}, ensure_ascii=False))
        return
    print(f"query: {desc}  ({len(index)} items, {index.info.get('kind')} prompt)")
    for rank, (score, row) in enumerate(hits, 1):
        print(f"{rank:>3}  {score:.4f}  {row.get('path') or row.get('text')}")


# ---- export ----
def export_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="export.py", description="Merge a LoRA adapter into its base model.")
    parser.add_argument("--model", default="default")
    parser.add_argument("--adapter", help="LoRA adapter folder (omit to copy the base model)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--format", default="merged", choices=("merged", "sentence_transformers"),
                        help="merged: a folder mmembed loads; sentence_transformers: also SentenceTransformer(folder)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="sentence_transformers format of the default model (smol_llava): ship its modeling code, "
                             "so SentenceTransformer(folder, trust_remote_code=True) encodes images too "
                             "(without it: its language model, texts only)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub repo afterwards")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from mmembed.inference.export import check_hub_online, export_merged, push_to_hub

    if args.push_to_hub:  # offline: say so now, not after minutes of merging
        check_hub_online(args.push_to_hub)
    if args.trust_remote_code and args.format != "sentence_transformers":
        raise UsageError("--trust-remote-code ships model code for --format sentence_transformers only")
    if args.format == "sentence_transformers":
        from mmembed.inference.st_export import export_sentence_transformers

        out = export_sentence_transformers(args.out, args.adapter, model=args.model, dtype=args.dtype,
                                           overwrite=args.overwrite, remote_code=args.trust_remote_code)
        print(f"wrote {out}: load it with SentenceTransformer({str(out)!r}) or Embedder.from_pretrained({str(out)!r})")
    else:
        out = export_merged(args.out, args.adapter, model=args.model, dtype=args.dtype, overwrite=args.overwrite)
        print(f"wrote {out}: load it with Embedder.from_pretrained({str(out)!r})")
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(out, args.push_to_hub)}")


def main(name: str, argv=None) -> int:
    return _run({"search": search_main, "export": export_main}[name], argv)
