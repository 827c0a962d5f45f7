"""Command lines behind src/embed.py, src/search.py and src/export.py (argparse; see docs/inference.md)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class UsageError(ValueError):
    """Bad command-line input; reported without a traceback."""


def _model_args(parser: argparse.ArgumentParser, default: str | None = "default") -> None:
    parser.add_argument("--model", default=default, help="'default', a hub id or a model folder")
    parser.add_argument("--adapter", help="a LoRA adapter folder (e.g. <run>/adapters/last)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def _run(main, argv) -> int:
    from mmembed.data.benchmarks.images import UnreadableImageError
    from mmembed.inference.index import IndexFormatError
    from mmembed.models.backbones import BackboneLoadError

    errors = (UsageError, UnreadableImageError, IndexFormatError, BackboneLoadError, FileNotFoundError, FileExistsError)
    try:
        main(argv)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


# ---- embed ----
def read_items(args) -> tuple[str, list, list[dict], str]:
    """(modality, items to encode, metadata rows, source description) from --images/--texts/--csv."""
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise UsageError(f"--images {folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
        meta = [{"id": i, "path": str(p.resolve())} for i, p in enumerate(paths)]
        return "images", [str(p) for p in paths], meta, str(folder.resolve())
    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        rows = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        meta = [{"id": i, "line": n, "text": line} for i, (n, line) in enumerate(rows)]
        return "texts", [line for _, line in rows], meta, str(Path(args.texts).resolve())
    with open(args.csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=args.delimiter)
        if args.column not in (reader.fieldnames or []):
            raise UsageError(f"{args.csv} has no column {args.column!r}; columns: {reader.fieldnames}")
        table = list(reader)
    meta = [{"id": i, "row": n, "text": r[args.column], "fields": r} for i, (n, r) in enumerate(enumerate(table))]
    return "texts", [r[args.column] for r in table], meta, str(Path(args.csv).resolve())


def embed_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="embed.py", description="Embed a folder of images or a list of texts into an index.")
    _model_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of images (searched recursively)")
    source.add_argument("--texts", help="a text file, one text per line (blank lines skipped)")
    source.add_argument("--csv", help="a CSV file; embeds --column")
    parser.add_argument("--column", default="caption", help="CSV column to embed (default: caption)")
    parser.add_argument("--delimiter", default=",", help="CSV delimiter (default ','; '\\t' for TSV)")
    parser.add_argument("--kind", help="prompt kind (default: text / image; e.g. cir_target for CIR candidates)")
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    from mmembed.inference.embedder import Embedder
    from mmembed.inference.index import INFO, write_index

    out = Path(args.out)
    if (out / INFO).exists() and not args.overwrite:
        raise UsageError(f"{out} already holds an index; pass --overwrite to replace it")
    modality, items, meta, source_desc = read_items(args)
    embedder = Embedder.from_pretrained(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    start = time.perf_counter()
    vectors = embedder.encode(
        **{modality: items}, batch_size=args.batch_size, progress=not args.no_progress, kind=args.kind
    )
    seconds = time.perf_counter() - start
    kind = args.kind or ("text" if modality == "texts" else "image")
    info = {
        "model": args.model,
        "model_path": embedder.backbone.name_or_path,
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        "dtype": args.dtype,
        "modality": modality[:-1],
        "kind": kind,
        "source": source_desc,
        "prompt": embedder.embedder.renderer.render(kind, "<sent>"),
        "prompts": embedder.rendered_prompts(),
        "prompt_config": dataclasses.asdict(embedder.prompts),
        "normalized": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_index(out, vectors, meta, info)
    print(f"wrote {len(items)} x {vectors.shape[1]} vectors to {out} ({seconds:.1f} s, {len(items) / max(seconds, 1e-9):.1f}/s)")


# ---- search ----
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
    _model_args(parser, default=None)
    args = parser.parse_args(argv)
    if args.edit and not args.image:
        raise UsageError("--edit modifies an image query: pass --image too")
    from mmembed.inference.embedder import Embedder
    from mmembed.inference.index import load_index

    index = load_index(args.index)
    saved_path = index.info.get("model_path")
    model = args.model or (saved_path if saved_path and Path(saved_path).is_dir() else index.info["model"])
    adapter = args.adapter if args.model else (args.adapter or index.info.get("adapter"))
    embedder = Embedder.from_pretrained(
        model, adapter=adapter, device=args.device, dtype=args.dtype, prompts=index.info.get("prompt_config")
    )
    if args.text is not None:
        query, desc = embedder.encode(texts=[args.text]), args.text
    elif args.edit:
        query, desc = embedder.encode(composed=[(args.image, args.edit)]), f"{args.image} + {args.edit!r}"
    else:
        query, desc = embedder.encode(images=[args.image]), args.image
    scores, ids = index.search(query, k=args.k, backend=args.backend)
    hits = [(float(s), index.metadata[int(i)]) for s, i in zip(scores[0], ids[0])]
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
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from mmembed.inference.export import export_merged

    out = export_merged(args.out, args.adapter, model=args.model, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {out}: load it with Embedder.from_pretrained({str(out)!r})")


def main(name: str, argv=None) -> int:
    return _run({"embed": embed_main, "search": search_main, "export": export_main}[name], argv)
