"""Tiny seeded encoders and data shared by the loss tests; `run_distributed` (tests/distributed.py)
runs a function on 2 gloo CPU processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.distributed import run_distributed  # noqa: F401  (the loss and objective tests import it from here)

IN_DIM, HIDDEN, OUT_DIM = 16, 32, 8
GLOBAL_BATCH = 8
DTYPE = torch.float64


class TinyEncoder(nn.Module):
    """Linear -> GELU -> Dropout -> Linear, seeded; L2-normalised output like the real embedder."""

    def __init__(self, dropout: float = 0.0, seed: int = 0, dtype: torch.dtype = DTYPE):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.GELU(), nn.Dropout(dropout), nn.Linear(HIDDEN, OUT_DIM))
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def make_groups(batch: int = GLOBAL_BATCH, seed: int = 1, dtype: torch.dtype = DTYPE) -> list[torch.Tensor]:
    """Input features of the whole (global) batch: [queries, positives, hard negatives]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, IN_DIM, generator=g, dtype=dtype) for _ in range(3)]


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def encode_as_ranks(model, groups, chunk_size: int, seeds: list[int]) -> list[torch.Tensor]:
    """Embed each group chunk by chunk *with* grad, drawing dropout masks from one RNG stream per rank.

    Group g's global batch is split into len(seeds) equal slices (rank order); slice r is encoded in
    chunks of `chunk_size` from rank r's stream (seeded with seeds[r], advancing over the groups in
    order), exactly the masks rank r draws when it runs GradCache on its local batch. With one seed
    this is the plain single-process full-batch forward (chunked only so the masks are comparable).
    """
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    out = []
    for group in groups:
        parts = []
        for r, local in enumerate(group.chunk(len(seeds))):
            torch.set_rng_state(states[r])
            parts += [model(chunk) for chunk in local.split(chunk_size)]
            states[r] = torch.get_rng_state()
        out.append(torch.cat(parts))
    return out
