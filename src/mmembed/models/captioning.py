"""Captioning inputs for projector alignment (LLaVA's first stage, MM-GEM's generative objective).

One training sequence is the chat-wrapped instruction with the image, then the caption and the end
of the turn:

    <user turn: "<image>\\nDescribe the image in one sentence."><assistant starts> caption <eos>

Only the caption tokens and the end-of-turn token are predicted (`labels`); the prompt, the image
tokens and the padding are -100. Sequences are right-padded so every caption follows its prompt directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmembed.models.backbones import Backbone
from mmembed.models.prompts import PromptRenderer

IGNORE_INDEX = -100
DEFAULT_INSTRUCTION = "<image>\nDescribe the image in one sentence."


class CaptionFeaturizer:
    """(images, captions) -> model inputs with `labels` for the language-model loss."""

    def __init__(self, backbone: Backbone, renderer: PromptRenderer, instruction: str = DEFAULT_INSTRUCTION):
        if not backbone.supports_images:
            raise ValueError(f"{backbone.name_or_path} was loaded without its vision tower; captioning needs images")
        if "<image>" not in instruction:
            raise ValueError(f"the captioning instruction must contain <image>, got {instruction!r}")
        self.backbone, self.renderer, self.instruction = backbone, renderer, instruction
        self.end_of_turn = backbone.tokenizer.eos_token or ""

    def prompt(self) -> str:
        return self.renderer.user_turn(self.instruction, what="captioning prompts")

    def __call__(self, images: Sequence, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        prompt = self.prompt()
        answers = [caption + self.end_of_turn for caption in captions]
        inputs = dict(
            self.backbone.processor(
                text=[prompt + answer for answer in answers],
                images=list(images),
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            )
        )
        # Tokenised alone, each answer gives the number of trailing tokens to predict: the chat template
        # ends the prompt with a newline, which never merges with the caption's first token.
        answer_lengths = [len(ids) for ids in self.backbone.tokenizer(answers, add_special_tokens=False)["input_ids"]]
        labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        for row, (length, answer) in enumerate(zip(lengths, answer_lengths)):
            labels[row, length - answer : length] = inputs["input_ids"][row, length - answer : length]
        inputs["labels"] = labels
        return inputs
