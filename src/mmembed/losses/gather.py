"""All-gather across ranks *with* gradient, for cross-device contrastive losses (plain torch.distributed).

Why the gradient matters: with a loss whose candidates come from every rank, rank r's embeddings
appear in every rank's loss. A plain `dist.all_gather` returns tensors cut from the graph, so rank r
only receives the gradient of its *own* loss with respect to its embeddings and the others' terms are
lost; DDP's averaging cannot restore them (tests/losses/test_distributed_infonce.py shows the
gradients then differ from the single-process ones). `torch.distributed.nn.functional.all_gather`
sums the incoming gradients back to the owning rank in its backward (reduce-scatter on NCCL,
all-to-all + sum on gloo), which is exactly the gradient of the sum of all ranks' losses; after
DDP divides by the world size, that is the gradient of the mean loss.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is unavailable or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group=group), dist.get_world_size(group=group)
    return 0, 1


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0, in rank order, keeping the autograd graph.

    Returns `x` itself when not distributed (or world size 1). Every rank must call this with a
    tensor of the same shape (torch.distributed's all_gather requires equal sizes; pad or use
    `drop_last=True` samplers so local batches match). The result is
    `cat([x_rank0, x_rank1, ..., x_rank{W-1}])`; in backward each rank receives the sum over all
    ranks of the gradients with respect to its slice (a collective: every rank must run backward).
    """
    _, world = rank_and_world(group)
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch >= 2.10 marks it deprecated in favour of functional collectives whose backward needs a
        # reduce-scatter, which gloo (CPU) lacks; this one works on every backend.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.nn\.functional\.all_gather.*")
        parts = all_gather(x, group=group if group is not None else dist.group.WORLD)
    return torch.cat(parts, dim=0)


def gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """`cat` of `x` from all ranks in rank order, without gradient (masks, counts, teacher targets).

    Every rank must call it with a tensor of the same shape; `x` itself when not distributed.
    """
    _, world = rank_and_world(group)
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def global_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum of `x` over all ranks (a copy; no gradient); `x` itself when not distributed."""
    _, world = rank_and_world(group)
    if world == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total, group=group)
    return total
