"""UniME stage 2: hard-negative enhanced instruction tuning on MMEB-format (query, positive) pairs.

Rows are `MMEBRows` (mmembed.data.collate): a query and a positive target, each text, an image or an
image with text (mixed within a batch), and optionally a mined negative target. Each side is embedded
per modality, with the prompt kinds the MMEB evaluation uses (mmembed.evaluation.mmeb_inputs): text
alone -> the "text" prompt around instruction + text; an image alone -> the "image" prompt; an image
with text -> the "text" prompt around MMEB's text, whose `<image>` puts the image where MMEB puts it.
The loss is `mmembed.losses.hard_negative.hard_negative_nce` (false-negative filter beta, k hardest
negatives, tau) over the global batch of targets, plus the mined negatives as extra candidates when
`file_negatives` is on. Rows whose query or positive image could not be read stay in the batch, masked,
so every rank gathers equal shapes. A pure function of the embeddings: GradCache works.

Targets carry an identity (mmembed.objectives.target_identity: text + image pixels): a copy of a query's
positive elsewhere in the global batch is never its negative, and each distinct positive of a rank's batch
is embedded once (`dedup_targets`; the rows are expanded back before the loss, so shapes stay equal across
ranks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmembed.errors import ConfigError
from mmembed.losses.hard_negative import hard_negative_nce
from mmembed.models.prompts import IMAGE
from mmembed.objectives.base import EmbeddingObjective, ObjectiveOutput, StepContext
from mmembed.objectives.image_text import placeholder_image
from mmembed.objectives.target_identity import distinct, expand, target_identity

MODALITIES = ("text", "image", "image+text")


def modality(text: str | None, image) -> str:
    if image is None:
        return "text"
    return "image" if not (text or "").replace(IMAGE, "").strip() else "image+text"


def featurize_side(featurizer, texts: Sequence[str | None], images: Sequence) -> list[tuple[torch.Tensor, dict]]:
    """[(row indices, model inputs)] for one side of the batch, one entry per modality present."""
    out = []
    for kind in MODALITIES:
        rows = [i for i, (t, im) in enumerate(zip(texts, images)) if modality(t, im) == kind]
        if not rows:
            continue
        if kind == "text":
            inputs = featurizer.featurize_text([texts[i] or " " for i in rows])
        elif kind == "image":
            inputs = featurizer.featurize_images([images[i] for i in rows], kind="image")
        else:
            inputs = featurizer.featurize_images([images[i] for i in rows], [texts[i] for i in rows], kind="text")
        out.append((torch.tensor(rows), inputs))
    return out


def side_inputs(rows: Sequence[dict], side: str, usable: Sequence[bool]) -> tuple[list, list]:
    """(texts, images) of one side; an unusable row keeps its place with an input of the same modality (masked)."""
    texts, images = [], []
    for row, fine in zip(rows, usable):
        text, image = row.get(side), row.get(f"{side}_image")
        if not fine:
            image = placeholder_image() if image is not None or (text and IMAGE in text) else None
            text = text if text is not None else " "
        texts.append(text)
        images.append(image)
    return texts, images


class HardNegativeNCE(EmbeddingObjective):
    """UniME's stage-2 loss on MMEB rows; `beta`, `k`, `tau` as in the paper (0.1, 8, 0.02)."""

    name = "hard_negative_nce"
    row_kind = "mmeb_pairs"

    def __init__(self, beta: float = 0.1, k: int = 8, tau: float = 0.02, file_negatives: bool = False,
                 dedup_targets: bool = True):
        # checked here, at config time, not at the first step (the loss checks again for direct callers)
        if not float(tau) > 0:
            raise ConfigError(f"objective.tau must be > 0, got {tau}")
        if int(k) < 1:
            raise ConfigError(f"objective.k must be >= 1 hard negatives per query, got {k}")
        self.beta, self.k, self.tau, self.file_negatives = float(beta), int(k), float(tau), bool(file_negatives)
        self.dedup_targets = bool(dedup_targets)

    def features(self, featurizer, rows: Sequence[dict]) -> dict:
        ok = [bool(row["ok"]) for row in rows]
        sides, index, ids = {}, {}, {}
        for side in ("qry", "pos") + (("neg",) if self.file_negatives else ()):
            usable = ok if side != "neg" else [bool(row.get("neg_ok")) for row in rows]
            texts, images = side_inputs(rows, side, usable)
            if side != "qry":
                ids[side] = [target_identity(text, image) for text, image in zip(texts, images)]
                if self.dedup_targets:  # one forward per distinct answer; loss() expands the rows back
                    keep, index[side] = distinct(ids[side])
                    texts, images = [texts[i] for i in keep], [images[i] for i in keep]
            sides[side] = featurize_side(featurizer, texts, images)
        features = {"sides": sides, "valid": torch.tensor(ok), "index": index,
                    "target_ids": torch.tensor(ids["pos"], dtype=torch.long)}
        if self.file_negatives:
            features["neg_ids"] = torch.tensor(ids["neg"], dtype=torch.long)
            features["neg_valid"] = torch.tensor([bool(row.get("neg_ok")) for row in rows])
        return features

    def groups(self, features: dict) -> list[dict]:
        return [inputs for side in features["sides"].values() for _, inputs in side]

    def loss(self, embeddings: Sequence[torch.Tensor], features: dict, ctx: StepContext) -> ObjectiveOutput:
        parts, at = {}, 0
        for side, entries in features["sides"].items():  # the order groups() gave them in
            rows = torch.cat([r for r, _ in entries])
            stacked = torch.cat(list(embeddings[at : at + len(entries)]))
            at += len(entries)
            parts[side] = stacked[torch.argsort(rows.to(stacked.device))]  # back to row order
            if side in features["index"]:  # distinct targets back to one row each
                parts[side] = expand(parts[side], features["index"][side])
        out = hard_negative_nce(parts["qry"], parts["pos"], beta=self.beta, k=self.k, tau=self.tau,
                                valid=features["valid"], extra=parts.get("neg"), extra_valid=features.get("neg_valid"),
                                target_ids=features["target_ids"], extra_ids=features.get("neg_ids"))
        return ObjectiveOutput(out.loss, {
            "mean_duplicate_targets": float(out.mean_duplicates),
            "distinct_targets": float(len(features["target_ids"].unique())),
            "false_negative_fraction": float(out.false_negative_fraction),
            "mean_false_negatives": float(out.mean_false_negatives),
            "padded_fraction": float(out.padded_fraction),
            "num_candidates": float(out.num_candidates),
        })
