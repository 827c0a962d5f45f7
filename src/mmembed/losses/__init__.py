"""Contrastive and distillation losses: pure functions of embeddings (no Lightning, no Hydra)."""

from mmembed.losses.gather import gather_with_grad, rank_and_world
from mmembed.losses.gradcache import grad_cache_step, split_batch
from mmembed.losses.infonce import InfoNCEOutput, distributed_info_nce, info_nce

__all__ = [
    "InfoNCEOutput",
    "distributed_info_nce",
    "gather_with_grad",
    "grad_cache_step",
    "info_nce",
    "rank_and_world",
    "split_batch",
]
