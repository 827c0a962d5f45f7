"""A vision-to-LLM projector grounded in what the vision tower already recognises.

An untrained MLP maps EfficientNet features to arbitrary points of the LLM's input space, so image
embeddings start at chance. The tower, though, was trained with ImageNet labels and ships the
classifier head that reads them (1280 -> 1000). This projector turns each of the 7x7 feature vectors
into a mixture of *words the LLM already knows*:

    token = token_scale * sum_c p_c * table[c]      p = top-k softmax(head(feature) / temperature)

where table[c] is the LLM's own input embedding of class c's name (mean of its token embeddings,
unit-normalised) and token_scale the typical norm of an input embedding, so the tokens look like
ordinary word embeddings to the LLM. Before any training the image prompt then reads like a bag
of the class names the tower sees. Everything is differentiable: the head, the table, an optional
learned MLP path (added with a mixing weight; it starts at zero output, so the grounded path alone
is used until alignment trains it) all fine-tune under the captioning loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from mmembed.errors import ConfigError
from mmembed.models.smol_llava.projectors.base import AssemblyParts, Projector, ProjectorKind, ProjectorSettings
from mmembed.models.smol_llava.projectors.mlp import mlp_of

# Where each token's class probabilities come from: its own 7x7 cell ("patch"), the whole image
# ("image": the head on mean-pooled features, which is how the head was trained), or the mean of both.
POOLS = ("patch", "image", "blend")


def top_k_probabilities(logits: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) restricted to each row's top_k classes (renormalised), dense.

    Restricting then renormalising equals a softmax over the kept logits alone; top_k = 0 keeps all.
    """
    scaled = logits / temperature
    if not top_k or top_k >= logits.shape[-1]:
        return scaled.softmax(dim=-1)
    values, index = scaled.topk(top_k, dim=-1)
    return torch.zeros_like(scaled).scatter(-1, index, values.softmax(dim=-1))


class GroundedProjector(Projector):
    """Vision features [B, N, vision_dim] -> LLM input tokens [B, N, hidden_size] via class-name embeddings."""

    def __init__(
        self,
        vision_dim: int,
        hidden_size: int,
        num_classes: int = 1000,
        top_k: int = 5,
        temperature: float = 1.0,
        token_scale: float = 1.0,
        pool: str = "patch",
        renormalize: bool = False,
        mlp: nn.Module | None = None,
        mlp_weight: float = 1.0,
        learn_mlp_weight: bool = True,
    ):
        super().__init__()
        check_grounded_settings(top_k, temperature, pool, num_classes)
        self.top_k, self.temperature, self.token_scale = int(top_k), float(temperature), float(token_scale)
        self.pool, self.renormalize = pool, bool(renormalize)
        self.classifier = nn.Linear(vision_dim, num_classes)
        self.class_table = nn.Parameter(torch.zeros(num_classes, hidden_size))
        self.mlp = mlp
        # A fixed weight is a buffer, not a frozen parameter: alignment sets requires_grad on every
        # projector parameter, which would silently make a "fixed" weight learn.
        weight = torch.tensor(float(mlp_weight))
        if learn_mlp_weight:
            self.mlp_weight = nn.Parameter(weight)
        else:
            self.register_buffer("mlp_weight", weight)
        self.learn_mlp_weight = bool(learn_mlp_weight)
        self.initial_mlp_weight = float(mlp_weight)

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, N, num_classes] sparse probabilities per token (pool "blend": averaged)."""
        logits = self.classifier(features)
        patch = top_k_probabilities(logits, self.top_k, self.temperature)
        if self.pool == "patch":
            return patch
        # The head is linear, so the mean of the patch logits is the head applied to mean-pooled features.
        image = top_k_probabilities(logits.mean(dim=1, keepdim=True), self.top_k, self.temperature).expand_as(patch)
        return image if self.pool == "image" else (patch + image) / 2

    def grounded_tokens(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.class_probabilities(features) @ self.class_table
        if self.renormalize:  # a mixture of distinct rows is shorter than one row; restore the word-like norm
            tokens = F.normalize(tokens, dim=-1)
        return self.token_scale * tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.grounded_tokens(features)
        if self.mlp is not None and (self.learn_mlp_weight or float(self.mlp_weight) != 0.0):
            tokens = tokens + self.mlp_weight * self.mlp(features)
        return tokens

    def init_fresh(self, std: float) -> None:
        # a fresh grounded projector starts with the MLP path at zero output: the grounded path alone is used
        # until alignment trains it
        init.normal_(self.class_table, std=std)
        init.constant_(self.mlp_weight, self.initial_mlp_weight)
        if self.mlp is not None:
            init.zeros_(self.mlp.linear_2.weight)
            init.zeros_(self.mlp.linear_2.bias)

    @torch.no_grad()
    def load_grounding(self, classifier: nn.Linear, class_table: torch.Tensor) -> None:
        """Copy the tower's classifier head and the class-name table (see `class_name_table`) in."""
        if tuple(class_table.shape) != tuple(self.class_table.shape):
            raise ConfigError(f"class table of shape {tuple(class_table.shape)}; the projector expects "
                              f"{tuple(self.class_table.shape)} (grounded_num_classes x the LLM's hidden size)")
        self.classifier.load_state_dict(classifier.state_dict())
        self.class_table.copy_(class_table)


def check_grounded_settings(top_k: int, temperature: float, pool: str, num_classes: int) -> None:
    if pool not in POOLS:
        raise ConfigError(f"grounded_pool={pool!r}: expected one of {POOLS}")
    if not 0 <= int(top_k) <= num_classes:
        raise ConfigError(f"grounded_top_k={top_k}: expected 0 (all classes) .. {num_classes}")
    if not float(temperature) > 0:
        raise ConfigError(f"grounded_temperature={temperature}: expected a positive number")


@torch.no_grad()
def class_name_table(names: Sequence[str], tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """[len(names), hidden] unit-norm rows: the mean input embedding of each name's tokens.

    Names are tokenised with a leading space, the form a word takes inside a sentence (" dog", not
    "dog"), which is how captions and prompts present them to the LLM.
    """
    rows = []
    for name in names:
        ids = tokenizer(" " + name.replace("_", " ").strip(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"class name {name!r} tokenises to nothing")
        rows.append(embeddings[torch.tensor(ids)].float().mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def typical_embedding_norm(embeddings: torch.Tensor) -> float:
    """Median L2 norm of the LLM's input embedding rows: the scale its ordinary tokens come at."""
    return float(embeddings.float().norm(dim=-1).median())


@dataclass(frozen=True)
class GroundedSettings(ProjectorSettings):
    """config.json's grounded_* fields. The defaults were chosen by pre-alignment retrieval on a 200-image
    Flickr8k test subset; assembly measures token_scale from the LLM's embeddings."""

    grounded_num_classes: int = 1000
    grounded_top_k: int = 5
    grounded_temperature: float = 1.0
    grounded_token_scale: float = 1.0
    grounded_pool: str = "patch"
    grounded_renormalize: bool = False
    grounded_mlp_weight: float = 1.0
    grounded_learn_mlp_weight: bool = True


class GroundedKind(ProjectorKind):
    """The default (recipe smol_llava-v2): the tower's ImageNet head + the LLM's embeddings of the class names."""

    name = "grounded"
    recipe = "smol_llava-v2"
    settings = GroundedSettings
    tunable = ("grounded_top_k", "grounded_temperature", "grounded_pool", "grounded_renormalize",
               "grounded_mlp_weight", "grounded_learn_mlp_weight")
    needs_class_names = True

    def build(self, config) -> GroundedProjector:
        s = GroundedSettings.from_config(config)
        return GroundedProjector(
            config.vision_hidden_size, config.text_config.hidden_size, num_classes=s.grounded_num_classes,
            top_k=s.grounded_top_k, temperature=s.grounded_temperature, token_scale=s.grounded_token_scale,
            pool=s.grounded_pool, renormalize=s.grounded_renormalize, mlp=mlp_of(config),
            mlp_weight=s.grounded_mlp_weight, learn_mlp_weight=s.grounded_learn_mlp_weight,
        )

    def assembly_fields(self, parts: AssemblyParts, overrides: dict) -> dict:
        fields = super().assembly_fields(parts, overrides)
        fields["grounded_token_scale"] = typical_embedding_norm(parts.embeddings)
        return fields

    def load_pretrained(self, projector: GroundedProjector, parts: AssemblyParts, config) -> None:
        projector.load_grounding(parts.classifier, class_name_table(parts.class_names, parts.tokenizer, parts.embeddings))

    def describe(self, parts: AssemblyParts, seed: int) -> str:
        return ("grounded: EfficientNet-Lite0's ImageNet head + the LLM's embeddings of the 1,000 class names "
                f"({parts.class_list}); MLP path zero-initialised, torch.manual_seed({seed})")
