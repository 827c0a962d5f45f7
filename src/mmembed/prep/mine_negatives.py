"""Mine hard negatives for MMEB-format training files offline (UniME stage 2's data, GPU-sized corpora).

    python -m mmembed.prep.mine_negatives --files train/Flickr8k_t2i.jsonl --image-root images \
        --out mined/Flickr8k_t2i.jsonl [--model default --adapter RUN/adapters/last] [--beta 0.1]

Every query and every distinct positive target of the file is embedded with the model (the prompt kinds
of the MMEB evaluation, `mmembed.evaluation.mmeb_inputs.embed_inputs`); each query's candidates are all
the file's targets. Its own positive, and targets scoring above the positive + beta (the stage-2 loss's
false-negative rule), are left out; the highest-scoring target left becomes the row's `neg_text` /
`neg_image_path`. Scores are exact (blocks of queries x all targets). Rows are written unchanged
otherwise, in the file's order; training then reads them with `objective.file_negatives=true`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmembed.data.evalsets.mmeb import MMEBInput, as_input, read_rows
from mmembed.errors import MMEmbedError

BLOCK = 4096  # queries scored at once against every target


def hardest_negatives(query: torch.Tensor, target: torch.Tensor, positive: torch.Tensor, beta: float) -> torch.Tensor:
    """[Q] index of each query's hardest target that is neither its positive nor a false negative
    (score > positive's + beta); -1 when none is left. query [Q, D], target [T, D] normalised, positive [Q]."""
    out = torch.full((query.shape[0],), -1, dtype=torch.long)
    for start in range(0, query.shape[0], BLOCK):
        scores = query[start : start + BLOCK] @ target.T
        pos = positive[start : start + BLOCK]
        rows = torch.arange(scores.shape[0])
        own = scores[rows, pos]
        scores[rows, pos] = float("-inf")
        scores[scores > own[:, None] + beta] = float("-inf")
        best = scores.max(dim=1)
        out[start : start + BLOCK] = torch.where(torch.isfinite(best.values), best.indices, -1)
    return out


def mine_file(embedder, path: Path, image_root: Path, beta: float = 0.1, batch_size: int = 32,
              progress: bool = True) -> tuple[list[dict], dict]:
    """(the rows with neg_text / neg_image_path filled in, counts)."""
    from mmembed.evaluation.mmeb_inputs import embed_inputs

    rows = read_rows(path)
    queries = [as_input(None, r.get("qry"), r.get("qry_image_path"), image_root, f"{path} row {i}")
               for i, r in enumerate(rows)]
    positives = [as_input(None, r.get("pos_text"), r.get("pos_image_path"), image_root, f"{path} row {i} (pos)")
                 for i, r in enumerate(rows)]
    slot: dict[MMEBInput, int] = {}
    raw: list[tuple[str, str]] = []  # each distinct target as the file wrote it (text, image path)
    for r, p in zip(rows, positives):
        if p not in slot:
            slot[p] = len(slot)
            raw.append((r.get("pos_text") or "", r.get("pos_image_path") or ""))
    kinds = {"text": "text", "image": "image", "image+text": "text"}
    q_emb, q_failed = embed_inputs(embedder, queries, kinds, batch_size, "skip", progress, f"{path.name} queries")
    t_emb, t_failed = embed_inputs(embedder, list(slot), kinds, batch_size, "skip", progress, f"{path.name} targets")
    t_emb[torch.tensor(t_failed, dtype=torch.long)] = 0.0  # an unreadable target scores 0: rarely picked
    picked = hardest_negatives(q_emb, t_emb, torch.tensor([slot[p] for p in positives]), beta)
    out, found, unreadable = [], 0, set(q_failed)
    for i, (row, j) in enumerate(zip(rows, picked.tolist())):
        row = dict(row)
        if j >= 0 and i not in unreadable:
            row["neg_text"], row["neg_image_path"] = raw[j]
            found += 1
        out.append(row)
    return out, {"rows": len(rows), "distinct_targets": len(slot), "mined": found,
                 "unreadable_queries": len(q_failed), "unreadable_targets": len(t_failed)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", nargs="+", required=True, help="MMEB training files (.jsonl / .json / .parquet)")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--out", required=True, help="a .jsonl file (one input file) or a folder")
    parser.add_argument("--model", default="default")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        from mmembed.inference import Embedder

        out = Path(args.out)
        if len(args.files) > 1 and out.suffix:
            raise MMEmbedError(f"--out {out}: several --files need an output folder")
        embedder = Embedder.from_pretrained(args.model, adapter=args.adapter, device=args.device)
        for name in args.files:
            path = Path(name)
            target = out if out.suffix else out / (path.stem + ".jsonl")
            rows, counts = mine_file(embedder, path, Path(args.image_root), args.beta, args.batch_size)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            tmp.replace(target)
            print(f"{path} -> {target}: {json.dumps(counts)}")
    except MMEmbedError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

