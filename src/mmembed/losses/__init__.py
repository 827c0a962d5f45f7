"""Contrastive and distillation losses: pure functions of embeddings (no Lightning, no Hydra)."""

from mmembed.losses.infonce import info_nce

__all__ = ["info_nce"]
