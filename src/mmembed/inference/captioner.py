"""Captions for images from a model trained to caption (MM-GEM's generative half, or an aligned projector).

The prompt is the captioning objective's own (`Featurizer.generation_inputs`: the same instruction, the
same image placeholders, the same chat wrapping), so the model continues exactly the prefix it learned
to continue. Decoding is transformers' `generate`: greedy (num_beams=1) or beam search, no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from mmembed.models.featurizer import DEFAULT_CAPTION_INSTRUCTION


class Captioner:
    """`caption(images) -> list[str]` with an `MLLMEmbedder`'s model and featurizer (from the model factory)."""

    def __init__(self, embedder, instruction: str = DEFAULT_CAPTION_INSTRUCTION, max_new_tokens: int = 30,
                 num_beams: int = 1):
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} and num_beams={num_beams} must both be >= 1")
        self.embedder, self.instruction = embedder, instruction
        self.max_new_tokens, self.num_beams = int(max_new_tokens), int(num_beams)

    @torch.no_grad()
    def caption(self, images: Sequence, batch_size: int = 8, progress: bool = False,
                boxes: Sequence | None = None) -> list[str]:
        """One caption per image; with `boxes` (one (x1, y1, x2, y2) in pixels per image), one caption of
        each image's box: its RoI-pooled region is the prefix (MM-GEM's region captioning, model=mmgem)."""
        from tqdm.auto import tqdm

        model, featurizer = self.embedder.model.eval(), self.embedder.featurizer
        tokenizer = featurizer.tokenizer
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"one box per image: {len(boxes)} boxes for {len(images)} images")
        out: list[str] = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="captions", unit="batch", disable=not progress):
            batch = images[start : start + batch_size]
            inputs = featurizer.generation_inputs(batch, self.instruction)
            inputs = {k: v.to(self.embedder.device) for k, v in inputs.items()}
            with self._regions(batch, None if boxes is None else boxes[start : start + batch_size]):
                generated = model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                )
            new = generated[:, inputs["input_ids"].shape[1]:]  # generate returns prompt + continuation
            out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
        return out

    def _regions(self, images, boxes):
        if boxes is None:
            return nullcontext()
        from mmembed.models.mmgem.extension import normalised_boxes, region_route

        # beam search repeats each image num_beams times in a row; its boxes follow
        norm = normalised_boxes(images, boxes, self.embedder.featurizer).repeat_interleave(self.num_beams, dim=0)
        return region_route(self.embedder.backbone.body, norm)
