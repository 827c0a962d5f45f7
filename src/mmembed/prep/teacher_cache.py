"""Build a distillation teacher's embedding cache once, before training (UniME stage 1).

    python -m mmembed.prep.teacher_cache --teacher all-mpnet-base-v2 --files a.csv b.csv --max-text-tokens 32

The cache itself (key, file format, lookup) is `mmembed.data.teacher_cache`; training builds the same file
on first use, so this command is for building it ahead of a run (e.g. once on one GPU before a cluster job).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mmembed.data.teacher_cache import TeacherCache, training_key_parts, training_sentences
from mmembed.errors import MMEmbedError
from mmembed.models.smol_llava.assembly import ensure_default_model


def _student_tokenizer(folder: str | None):
    """The tokenizer training cuts with (default: the default model's), loaded quietly: transformers warns
    about our custom model_type while probing the folder's config, although nothing is wrong."""
    import transformers


    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(folder or str(ensure_default_model()))
    finally:
        transformers.logging.set_verbosity(verbosity)


def main(argv: Sequence[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(description="Build a distillation teacher's embedding cache once.")
    parser.add_argument("--teacher", default="all-mpnet-base-v2", help="packaged name, sentence-transformers folder or hub id")
    parser.add_argument("--files", nargs="+", required=True, help="SimCSE-style training files (sent0,sent1[,hard_neg])")
    parser.add_argument("--max-text-tokens", type=int, default=32, help="training's data.max_text_tokens (0: no cut)")
    parser.add_argument("--student-tokenizer", default=None, help="tokenizer that cuts the texts (default: the default model's)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sentences = training_sentences(args.files, _student_tokenizer(args.student_tokenizer), args.max_text_tokens)
        cache = TeacherCache(args.cache_dir, batch_size=args.batch_size, device=args.device)
        result = cache.embeddings(args.teacher, sentences, training_key_parts(args.files, args.max_text_tokens))
    except MMEmbedError as err:  # a user mistake: one line, no traceback
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{result.path} ({len(result)} sentences x {result.vectors.shape[1]}, {'built' if result.built else 'already cached'})")
    return result.path


if __name__ == "__main__":
    main()
