"""MMEB inputs as vectors: every distinct (text, image) input embedded once, with the prompt kind of its modality.
Used by the MMEB benchmark (benchmarks/mmeb.py) and by hard-negative mining (mmembed.prep.mine_negatives).

Prompt kinds per input modality (`kinds`):
- text only: the "text" prompt around instruction + text (E5-V's sentence prompt);
- image only (no instruction): `kinds["image"]`, default "image";
- image + text: `kinds["image+text"]`, default "text": the sentence prompt around MMEB's text, whose `<image>`
  placeholder puts the image where MMEB puts it. A kind whose template has its own `<image>` (e.g.
  cir_query) gets the text without the placeholder instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmembed.data.evalsets.mmeb import MMEBInput
from mmembed.errors import DataConfigError
from mmembed.evaluation.common import prompt_record
from mmembed.evaluation.encode import encode_composed, encode_images, encode_texts
from mmembed.models.prompts import IMAGE


def kind_text(embedder, kind: str, text: str) -> str:
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
                                     [kind_text(embedder, kind, inputs[i].text) for i in idx], batch_size,
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


def input_prompt(embedder, kinds, inp: MMEBInput) -> dict:
    """The prompt record (kind, template, rendered example) of one input, for the protocol."""
    kind = kinds[inp.modality]
    text = None if inp.modality == "image" else kind_text(embedder, kind, inp.text)
    return {"modality": inp.modality, "kind": kind, **prompt_record(embedder, kind, text)}
