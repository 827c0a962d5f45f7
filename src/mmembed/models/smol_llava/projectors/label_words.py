"""A vision-to-LLM projector that writes the vision tower's top ImageNet labels as the LLM's own words.

The grounded projector (grounded.py) gives each of the 49 image tokens a probability-weighted
mean of class-name embeddings. On the Flickr8k 1k test that reads to the LLM as noise (text -> image
retrieval near chance), while the same tower's top-3 labels written as the text "a photo of X, Y, Z" and
embedded by the same LLM's text path retrieve better, untrained and more so after text-only training
(experiments/README.md#the-label-word-image-path-modelsmol_llava_label_words-2026-12-03): the LLM
understands the labels as words, not as averages of word vectors.

So this projector emits words. From the head's image-level logits (the mean of the 7x7 feature vectors,
which is how the head was trained) it takes the top-k classes and returns, per image, the input
embeddings of the token sequence

    <template prefix> <name 1> , <name 2> , ... <name k>        e.g. "a photo of golden retriever, tennis ball, ..."

exactly the tokens the tokenizer gives the label text. Images' label texts differ in length, the
placeholder span does not: the words sit at the end of the span and the unused positions before them
are *holes*, masked out of attention and skipped by the position ids, so the LLM sees the same sequence
as the label text written into the prompt (`SmolLlavaModel.forward` applies the holes; a test checks the
equality). An optional learned path (an MLP of the pooled features, added to every word token, zero at
the start) is what alignment trains: the word choice itself is a hard top-k, not differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.base import AssemblyParts, Projector, ProjectorKind, ProjectorSettings
from mmembed.models.smol_llava.projectors.mlp import mlp_of


class LabelWordProjector(Projector):
    """Vision features [B, N, vision_dim] -> (word embeddings [B, L, hidden], valid [B, L]) via the LLM's embeddings."""

    def __init__(self, vision_dim: int, num_classes: int, seq_length: int, max_name_tokens: int, top_k: int = 3,
                 prefix_length: int = 0, separator_length: int = 1, mlp: nn.Module | None = None,
                 mlp_weight: float = 1.0):
        super().__init__()
        if not 1 <= int(top_k) <= num_classes:
            raise ConfigError(f"label_top_k={top_k}: expected 1 .. {num_classes}")
        self.top_k, self.seq_length = int(top_k), int(seq_length)
        self.classifier = nn.Linear(vision_dim, num_classes)
        # Token ids, filled by `load_vocabulary` at assembly and saved with the weights (persistent buffers).
        self.register_buffer("name_ids", torch.zeros(num_classes, max_name_tokens, dtype=torch.long))
        self.register_buffer("name_lengths", torch.ones(num_classes, dtype=torch.long))
        self.register_buffer("prefix_ids", torch.zeros(prefix_length, dtype=torch.long))
        self.register_buffer("separator_ids", torch.zeros(separator_length, dtype=torch.long))
        self.mlp = mlp
        self.mlp_weight = nn.Parameter(torch.tensor(float(mlp_weight)))

    uses_holes = True

    def top_classes(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, top_k] class indices, most probable first (the head on pooled features)."""
        return self.classifier(features.mean(dim=1)).topk(self.top_k, dim=-1).indices

    @torch.no_grad()
    def label_ids(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L] token ids, [B, L] valid): each image's label text, right-aligned, cut to L tokens from the end
        of the last name (a label text longer than the span loses its first tokens, i.e. the template's)."""
        rows = []
        for classes in self.top_classes(features).tolist():
            pieces = [self.prefix_ids]
            for i, c in enumerate(classes):
                if i:
                    pieces.append(self.separator_ids)
                pieces.append(self.name_ids[c, : int(self.name_lengths[c])])
            rows.append(torch.cat(pieces)[-self.seq_length:])
        ids = torch.zeros(len(rows), self.seq_length, dtype=torch.long, device=features.device)
        valid = torch.zeros(len(rows), self.seq_length, dtype=torch.bool, device=features.device)
        for b, row in enumerate(rows):
            ids[b, self.seq_length - len(row):] = row
            valid[b, self.seq_length - len(row):] = True
        return ids, valid

    def forward(self, features: torch.Tensor, embed_tokens: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        ids, valid = self.label_ids(features)
        tokens = embed_tokens(ids)
        if self.mlp is not None:
            learned = self.mlp(features.mean(dim=1, keepdim=True)).to(tokens.dtype)  # [B, 1, hidden], broadcast
            tokens = tokens + self.mlp_weight.to(tokens.dtype) * learned * valid.unsqueeze(-1)
        return tokens, valid

    def project(self, features: torch.Tensor, embed_tokens: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return self(features, embed_tokens)

    def requires_grad_(self, requires_grad: bool = True) -> LabelWordProjector:
        """The head only picks label ids (under no_grad): it never receives a gradient, so it never trains.
        Leaving it trainable would make DDP wait for its gradient and fail at the second step."""
        super().requires_grad_(requires_grad)
        self.classifier.requires_grad_(False)
        return self

    def valid_positions(self, features: torch.Tensor) -> torch.Tensor:
        return self.label_ids(features)[1]

    def init_fresh(self, std: float) -> None:
        # the learned path starts at zero output: the label words alone until alignment trains it
        init.constant_(self.mlp_weight, 1.0)
        if self.mlp is not None:
            init.zeros_(self.mlp.linear_2.weight)
            init.zeros_(self.mlp.linear_2.bias)

    @torch.no_grad()
    def load_vocabulary(self, classifier: nn.Linear, name_ids: Sequence[Sequence[int]], prefix_ids: Sequence[int],
                        separator_ids: Sequence[int]) -> None:
        """Copy the tower's head and the token ids of the class names, the template prefix and the separator in."""
        if len(name_ids) != self.name_ids.shape[0] or max(map(len, name_ids)) > self.name_ids.shape[1]:
            raise ConfigError(f"{len(name_ids)} class names of up to {max(map(len, name_ids))} tokens; the projector "
                              f"holds {tuple(self.name_ids.shape)}")
        if len(prefix_ids) != len(self.prefix_ids) or len(separator_ids) != len(self.separator_ids):
            raise ConfigError("prefix / separator token counts differ from the projector's config")
        self.classifier.load_state_dict(classifier.state_dict())
        self.name_ids.zero_()
        for c, ids in enumerate(name_ids):
            if not ids:
                raise ConfigError(f"class {c}'s name tokenises to nothing")
            self.name_ids[c, : len(ids)] = torch.tensor(list(ids))
            self.name_lengths[c] = len(ids)
        self.prefix_ids.copy_(torch.tensor(list(prefix_ids), dtype=torch.long))
        self.separator_ids.copy_(torch.tensor(list(separator_ids), dtype=torch.long))


def label_vocabulary(names: Sequence[str], tokenizer, template: str = "a photo of {}",
                     separator: str = ",") -> dict:
    """Token ids that make up "<template prefix> name, name, ..." as the tokenizer writes that text.

    Names get a leading space (" dog": the form a word takes inside a sentence); the template must end
    in "{}" (its prefix is written before the names; "" = names alone).
    """
    if not template.endswith("{}") or template.count("{}") != 1:
        raise ConfigError(f"label_template={template!r}: expected text ending in one '{{}}', e.g. 'a photo of {{}}'")
    prefix = template[:-2].rstrip()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return {
        "name_ids": [encode(" " + n.replace("_", " ").strip()) for n in names],
        "prefix_ids": encode(prefix) if prefix else [],
        "separator_ids": encode(separator),
    }


def span_length(vocabulary: dict, top_k: int) -> int:
    """Placeholder tokens that hold the longest label text of top_k names (prefix, separators, names)."""
    longest = sorted(map(len, vocabulary["name_ids"]), reverse=True)[:top_k]
    return len(vocabulary["prefix_ids"]) + (top_k - 1) * len(vocabulary["separator_ids"]) + sum(longest)


@dataclass(frozen=True)
class LabelWordSettings(ProjectorSettings):
    """config.json's label-word fields: names per image and the template their text follows (the defaults: the
    head's top-3 classes as "a photo of X, Y, Z"), and the sizes of the token-id tables saved with the weights.
    The class count keeps its grounded_ name: folders written before the registry hold it so."""

    grounded_num_classes: int = 1000
    label_top_k: int = 3
    label_template: str = "a photo of {}"
    label_max_name_tokens: int = 1
    label_prefix_length: int = 0
    label_separator_length: int = 1


class LabelWordKind(ProjectorKind):
    """Recipe smol_llava-v3-label-words: the tower's top ImageNet names as the LLM's own word tokens. The span
    (image_seq_length) is what holds the longest label text, so the processor writes that many placeholders."""

    name = "label_words"
    recipe = "smol_llava-v3-label-words"
    settings = LabelWordSettings
    tunable = ("label_top_k", "label_template")
    needs_class_names = True
    uses_holes = True

    def build(self, config) -> LabelWordProjector:
        s = LabelWordSettings.from_config(config)
        return LabelWordProjector(
            config.vision_hidden_size, s.grounded_num_classes, seq_length=config.image_seq_length,
            max_name_tokens=s.label_max_name_tokens, top_k=s.label_top_k, prefix_length=s.label_prefix_length,
            separator_length=s.label_separator_length, mlp=mlp_of(config),
        )

    def assembly_fields(self, parts: AssemblyParts, overrides: dict) -> dict:
        fields = super().assembly_fields(parts, overrides)
        vocabulary = label_vocabulary(parts.class_names, parts.tokenizer, fields["label_template"])
        fields.update(
            image_seq_length=span_length(vocabulary, fields["label_top_k"]),
            label_max_name_tokens=max(map(len, vocabulary["name_ids"])),
            label_prefix_length=len(vocabulary["prefix_ids"]),
            label_separator_length=len(vocabulary["separator_ids"]),
        )
        return fields

    def load_pretrained(self, projector: LabelWordProjector, parts: AssemblyParts, config) -> None:
        template = LabelWordSettings.from_config(config).label_template
        vocabulary = label_vocabulary(parts.class_names, parts.tokenizer, template)
        projector.load_vocabulary(parts.classifier, **vocabulary)

    def processor_image_tokens(self, config) -> int:
        return config.image_seq_length

    def describe(self, parts: AssemblyParts, seed: int) -> str:
        return ("label words: EfficientNet-Lite0's ImageNet head's top-3 class names as the LLM's own tokens "
                f"(\"a photo of X, Y, Z\", {parts.class_list}); learned MLP path zero-initialised, "
                f"torch.manual_seed({seed})")
