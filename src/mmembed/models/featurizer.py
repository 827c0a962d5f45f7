"""Strings and images -> model inputs for one model: tokenizer, processor and prompt renderer, no weights.

A `Featurizer` is what DataLoader workers carry: it is built from the model folder (processor files
only, milliseconds to load) before the model itself loads, it pickles to a few MB, and it renders
prompts with the very `PromptRenderer` evaluation uses. The embedder holds the same object, so
training batches and evaluation inputs are featurised by one code path.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from mmembed.errors import ConfigError
from mmembed.models.prompts import PromptConfig, PromptRenderer, truncate_to_tokens

IGNORE_INDEX = -100  # label of positions the captioning loss does not predict
DEFAULT_CAPTION_INSTRUCTION = "<image>\nDescribe the image in one sentence."


class ImagesUnsupportedError(RuntimeError):
    """The model was loaded without a vision tower (or has none), so it cannot featurise images."""


class Featurizer:
    """Featurises texts, images, image+text pairs and captioning examples for one model."""

    def __init__(
        self,
        processor,
        tokenizer,
        family: str,
        image_token: str | None,
        prompts: PromptConfig | None = None,
        name_or_path: str = "",
        supports_images: bool = True,
    ):
        self.processor, self.tokenizer, self.family = processor, tokenizer, family
        self.image_token, self.name_or_path = image_token, name_or_path
        self.supports_images = bool(supports_images and image_token is not None)
        self.renderer = PromptRenderer(prompts or PromptConfig(), tokenizer, image_token)

    @property
    def prompts(self) -> PromptConfig:
        return self.renderer.config

    def with_prompts(self, prompts: PromptConfig) -> Featurizer:
        # a copy keeps the class: a model extension's featurizer subclass (e.g. MM-GEM's) survives
        out = copy.copy(self)
        out.renderer = PromptRenderer(prompts or PromptConfig(), self.tokenizer, self.image_token)
        return out

    def without_images(self) -> Featurizer:
        out = copy.copy(self)
        out.supports_images = False
        return out

    # ---- raw text ----
    def truncate(self, texts: Sequence[str], max_tokens: int | None) -> list[str]:
        """Cut raw texts to `max_tokens` tokens before templating (E5-V's cutoff)."""
        return truncate_to_tokens(texts, self.tokenizer, max_tokens)

    # ---- embedding inputs ----
    def featurize_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        prompts = self.renderer.render_many("text", list(texts))
        return dict(self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False))

    def featurize_images(
        self, images: Sequence, texts: Sequence[str] | None = None, kind: str = "image", category: str | None = None
    ) -> dict[str, torch.Tensor]:
        self._check_images()
        if texts is not None and len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts; composed inputs come in pairs")
        prompts = self.renderer.render_many(kind, None if texts is None else list(texts), n=len(images), category=category)
        return dict(self.processor(text=prompts, images=list(images), return_tensors="pt", padding=True,
                                   add_special_tokens=False))

    # ---- captioning inputs (LLaVA's first stage, MM-GEM's generative objective) ----
    def caption_inputs(
        self, images: Sequence, captions: Sequence[str], instruction: str = DEFAULT_CAPTION_INSTRUCTION
    ) -> dict[str, torch.Tensor]:
        """`<user turn: instruction with the image><assistant starts> caption <eos>`, right-padded, with
        `labels` = the caption and end-of-turn tokens (everything else IGNORE_INDEX)."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        prompt = self._caption_prompt(instruction)
        answers = [caption + (self.tokenizer.eos_token or "") for caption in captions]
        inputs = dict(self.processor(text=[prompt + a for a in answers], images=list(images), return_tensors="pt",
                                     padding=True, padding_side="right", add_special_tokens=False))
        # Tokenised alone, each answer gives the number of trailing tokens to predict: the prompt ends
        # with a newline (chat template) or a fixed suffix, which never merges with the caption's first token.
        answer_lengths = [len(ids) for ids in self.tokenizer(answers, add_special_tokens=False)["input_ids"]]
        labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
        for row, (length, answer) in enumerate(zip(inputs["attention_mask"].sum(dim=1).tolist(), answer_lengths)):
            labels[row, length - answer : length] = inputs["input_ids"][row, length - answer : length]
        inputs["labels"] = labels
        return inputs

    def generation_inputs(self, images: Sequence, instruction: str = DEFAULT_CAPTION_INSTRUCTION) -> dict[str, torch.Tensor]:
        """The captioning prompt alone (what `caption_inputs` puts before the caption), left-padded for
        `generate`: the model continues it with a caption."""
        prompt = self._caption_prompt(instruction)
        return dict(self.processor(text=[prompt] * len(images), images=list(images), return_tensors="pt", padding=True,
                                   padding_side="left", add_special_tokens=False))

    def _caption_prompt(self, instruction: str) -> str:
        """The rendered user turn of a captioning instruction, shared by training inputs and generation."""
        self._check_images()
        if "<image>" not in instruction:
            # the one check every caller passes (training, src/caption.py, caption benchmarks); each reads its own
            # setting, all of them defaulting to model.caption_instruction
            raise ConfigError("the captioning instruction must contain <image> (set objective.instruction, "
                              "generation.instruction, the benchmark's instruction or model.caption_instruction), "
                              f"got {instruction!r}")
        return self.renderer.user_turn(instruction, what="captioning prompts")

    def _check_images(self) -> None:
        if not self.supports_images:
            raise ImagesUnsupportedError(
                f"{self.name_or_path} cannot embed images here (a text-only model, or loaded with "
                "model.text_only=true)"
            )
