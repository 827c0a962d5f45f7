"""LLaVA-1.5's projector, Linear -> GELU -> Linear: the "mlp" projector (recipe smol_llava-v1, and folders
written before config.json had a `projector_type`) and the learned path inside the other projectors."""

from __future__ import annotations

import torch
from torch import nn

from mmembed.models.smol_llava.projectors.base import AssemblyParts, Projector, ProjectorKind


class MLPProjector(Projector):
    """Vision features [B, N, vision_dim] -> LLM input tokens [B, N, hidden_size]."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def mlp_of(config) -> MLPProjector:
    """The config's MLP (vision_hidden_size -> the LLM's hidden size)."""
    return MLPProjector(config.vision_hidden_size, config.text_config.hidden_size)


class MLPKind(ProjectorKind):
    """A freshly initialised (seeded) MLP: images carry no meaning until it is aligned."""

    name = "mlp"
    recipe = "smol_llava-v1"

    def build(self, config) -> MLPProjector:
        return mlp_of(config)

    def describe(self, parts: AssemblyParts, seed: int) -> str:
        return f"untrained MLP, torch.manual_seed({seed})"
