"""MMEB (`task: mmeb`): every distinct (text, image) input of every dataset embedded once, then hit@1 over
each query's own candidates; per dataset, meta-task, IND/OOD and overall (mmembed.metrics.mmeb).

Prompt kinds per input modality (settings `image_kind`, `image_text_kind`):
- text only: the "text" prompt around instruction + text (E5-V's sentence prompt);
- image only (no instruction): `image_kind`, default "image";
- image + text: `image_text_kind`, default "text": the sentence prompt around MMEB's text, whose `<image>`
  placeholder puts the image where MMEB puts it. A kind whose template has its own `<image>` (e.g.
  cir_query) gets the text without the placeholder instead.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from mmembed.data.evalsets.mmeb import MMEBDataset, MMEBInput, read_mmeb
from mmembed.errors import ConfigError, DataConfigError
from mmembed.evaluation.common import floats, option, prompt_record, required
from mmembed.evaluation.encode import encode_composed, encode_images, encode_texts
from mmembed.metrics.mmeb import AGGREGATES, MMEBHitAt1, dataset_info, group_members, summarize
from mmembed.models.prompts import IMAGE, KINDS

QUERY_CHUNK = 256
SCORE_BLOCK = 1 << 24  # floats of one gathered [queries, candidates, D] block


def read_mmeb_benchmark(cfg) -> list[MMEBDataset]:
    """The datasets, with every image present and every dataset's meta-task and IND/OOD known (fails fast)."""
    sets = read_mmeb(
        required(cfg, "root"), cfg.get("image_root"), cfg.get("datasets"), cfg.get("max_queries"),
        hint=cfg.get("missing_hint"),
    )
    _infos(cfg, sets)
    _kinds(cfg)
    return sets


def _infos(cfg, sets: list[MMEBDataset]) -> dict:
    overrides = option(cfg, "dataset_info", {})
    clash = sorted({d.name for d in sets} & set(AGGREGATES))
    if clash:
        raise DataConfigError(f"MMEB dataset name(s) {clash} clash with the averages' names; rename the file(s)")
    return {d.name: dataset_info(d.name, d.file_meta, overrides.get(d.name)) for d in sets}


def _kinds(cfg) -> dict[str, str]:
    kinds = {"text": "text", "image": option(cfg, "image_kind", "image"),
             "image+text": option(cfg, "image_text_kind", "text")}
    for key, kind in (("image_kind", kinds["image"]), ("image_text_kind", kinds["image+text"])):
        if kind not in KINDS:
            raise ConfigError(f"benchmark {cfg.get('name', 'mmeb')!r}: {key}={kind!r} is not a prompt kind; "
                              f"one of {KINDS}")
    return kinds


def _kind_text(embedder, kind: str, text: str) -> str:
    """The text handed to a composed prompt: without the placeholder when the template places the image."""
    renderer = getattr(embedder, "renderer", None)
    template = renderer.template(kind) if renderer is not None else ""
    return text.replace(IMAGE, "").strip() if IMAGE in template else text


def embed_inputs(embedder, inputs: list[MMEBInput], kinds, batch_size, on_error, progress, tag):
    """[len(inputs), D] L2-normalised embeddings and the indices whose image could not be read."""
    groups = {m: [i for i, x in enumerate(inputs) if x.modality == m] for m in ("text", "image", "image+text")}
    parts, failed = {}, []
    if groups["text"]:
        parts["text"] = (groups["text"], encode_texts(embedder, [inputs[i].text for i in groups["text"]],
                                                      batch_size, desc=f"{tag} texts", progress=progress))
    if groups["image"]:
        idx = groups["image"]
        emb, ok, _ = encode_images(embedder, [inputs[i].image for i in idx], batch_size, kind=kinds["image"],
                                   on_error=on_error, desc=f"{tag} images", progress=progress)
        parts["image"] = ([idx[j] for j in ok], emb)
        failed += sorted(set(idx) - {idx[j] for j in ok})
    if groups["image+text"]:
        idx, kind = groups["image+text"], kinds["image+text"]
        emb, ok, _ = encode_composed(embedder, [inputs[i].image for i in idx],
                                     [_kind_text(embedder, kind, inputs[i].text) for i in idx], batch_size,
                                     kind=kind, on_error=on_error, desc=f"{tag} image+text", progress=progress)
        parts["image+text"] = ([idx[j] for j in ok], emb)
        failed += sorted(set(idx) - {idx[j] for j in ok})
    dim = next((e.shape[1] for _, e in parts.values() if e.numel()), None)
    if dim is None:
        raise DataConfigError(f"MMEB {tag}: no input could be embedded (every image unreadable?)")
    table = torch.zeros(len(inputs), dim)
    for idx, emb in parts.values():
        if idx:
            table[torch.tensor(idx)] = emb.float()
    return F.normalize(table, dim=-1), failed


def _prompt(embedder, kinds, inp: MMEBInput) -> dict:
    kind = kinds[inp.modality]
    text = None if inp.modality == "image" else _kind_text(embedder, kind, inp.text)
    return {"modality": inp.modality, "kind": kind, **prompt_record(embedder, kind, text)}


def run_mmeb(embedder, cfg, batch_size: int = 16, progress: bool = True) -> dict:
    sets = read_mmeb_benchmark(cfg)
    name, kinds, on_error = cfg.get("name", "mmeb"), _kinds(cfg), option(cfg, "on_error", "skip")
    infos = _infos(cfg, sets)
    slot: dict[MMEBInput, int] = {}
    for d in sets:
        for q in d.queries:
            for inp in (q.query, *q.candidates):
                slot.setdefault(inp, len(slot))
    inputs = list(slot)
    table, failed = embed_inputs(embedder, inputs, kinds, batch_size, on_error, progress, name)
    bad = set(failed)
    metric, chance, datasets_protocol = MMEBHitAt1(), {}, {}
    for d_id, d in enumerate(sets):
        rows = [[slot[q.query]] + [slot[c] for c in q.candidates] for q in d.queries]
        kept = [r for r in rows if not bad.intersection(r)]
        if not kept:
            raise DataConfigError(f"MMEB {d.name}: no query left whose images could all be read")
        # Queries in chunks whose gathered candidate block stays under SCORE_BLOCK floats.
        step = max(1, min(QUERY_CHUNK, SCORE_BLOCK // (max(len(r) for r in kept) * table.shape[1])))
        for start in range(0, len(kept), step):
            chunk = kept[start : start + step]
            width = max(len(r) for r in chunk) - 1
            cand = torch.tensor([r[1:] + [r[1]] * (width - len(r) + 1) for r in chunk])
            mask = torch.tensor([[j < len(r) - 1 for j in range(width)] for r in chunk])
            scores = torch.einsum("bd,bcd->bc", table[torch.tensor([r[0] for r in chunk])], table[cand])
            metric.update(scores, [d_id] * len(chunk), list(range(start, start + len(chunk))), mask=mask)
        sizes = [len(r) - 1 for r in kept]
        chance[d.name] = 100.0 * sum(1 / s for s in sizes) / len(sizes)
        first = d.queries[0]
        datasets_protocol[d.name] = {
            "files": [str(f) for f in d.files], "meta_task": infos[d.name].meta_task,
            "distribution": infos[d.name].distribution, "rows_in_file": d.rows_in_file, "queries": len(kept),
            "queries_dropped_unreadable_image": len(rows) - len(kept),
            "candidates_per_query": [min(sizes), max(sizes)],
            "query_modalities": dict(Counter(q.query.modality for q in d.queries)),
            "candidate_modalities": dict(Counter(c.modality for q in d.queries for c in q.candidates)),
            **({"file_meta": d.file_meta} if d.file_meta else {}),
            "prompts": {"query": _prompt(embedder, kinds, first.query),
                        "gold_target": _prompt(embedder, kinds, first.candidates[0])},
        }
    scores = metric.compute()
    per_dataset = {d.name: float(scores[i]) for i, d in enumerate(sets)}
    used = {d.name: infos[d.name] for d in sets}
    metrics = {**per_dataset, **summarize(per_dataset, used)}
    chance.update(summarize(chance, used))
    n_inputs = sum(1 + len(q.candidates) for d in sets for q in d.queries)
    protocol = {
        "task": "mmeb",
        "root": str(cfg["root"]),
        "image_root": str(cfg.get("image_root") or cfg["root"]),
        "score": "hit@1 (percent) over each query's own candidates, gold at index 0; cosine similarity; a tie "
                 "with the gold counts as a hit (MMEB's argmax takes the first maximum, the gold)",
        "averages": "plain means over datasets: meta-task, IND/OOD, overall = all datasets",
        "average_members": group_members(used),
        "inputs_in_rows": n_inputs,
        "unique_inputs_embedded": {"total": len(inputs), **Counter(x.modality for x in inputs)},
        "unreadable_inputs_skipped": len(failed),
        "prompt_kinds": kinds,
        "chance": floats(chance),
        "datasets": {k: {kk: vv for kk, vv in v.items() if kk != "prompts"} for k, v in datasets_protocol.items()},
        "prompts": {k: v["prompts"] for k, v in datasets_protocol.items()},
    }
    return {"metrics": floats(metrics), "protocol": protocol}
