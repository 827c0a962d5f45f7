"""Length buckets: one padded forward over texts of mixed lengths becomes a few forwards over rows of similar length.

A training batch of E5-V triplets is 3 x 16 texts padded to the longest: on the offline default, 39% of the
token positions of a `text_only` step were padding (perf/step_flops.py), and every op of the LLM (matmuls,
LoRA dropout masks, norms, attention) pays for them. Sorting the rows by length and cutting them into at
most `max_buckets` contiguous runs, each trimmed of its own padding, computes the same embeddings (RoPE
attention depends on relative positions only, so left padding never changes a row's vector) on fewer
positions. Inference already batches texts sorted by length (mmembed/evaluation/encode.py); this is the
training side, where a batch's rows are fixed by the loss.
"""

from __future__ import annotations

import torch

# The share of a batch's one-forward positions each run after the first must save (see plan_buckets).
MIN_SAVING = 0.03


def padded_positions(lengths: list[int], cuts: list[int]) -> int:
    """Positions computed when rows sorted by length (ascending) run as the runs ending at `cuts`."""
    total, start = 0, 0
    for end in cuts:
        total += (end - start) * lengths[end - 1]
        start = end
    return total


def best_cuts(lengths: list[int], max_buckets: int, run_cost: float = 0.0) -> list[int]:
    """Ends of at most `max_buckets` contiguous runs of `lengths` (sorted ascending) that minimise the
    padded positions (rows x the run's longest row, summed) plus `run_cost` positions for each run after
    the first: an exact dynamic programme, O(k n^2)."""
    n = len(lengths)
    inf = float("inf")
    # cost[b][j]: least positions for the first j rows in b runs; back[b][j]: where the last run starts
    cost = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    back = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    cost[0][0] = 0
    for b in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(b - 1, j):
                c = cost[b - 1][i] + (j - i) * lengths[j - 1]
                if c < cost[b][j]:
                    cost[b][j], back[b][j] = c, i
    b = min(range(1, max_buckets + 1), key=lambda k: (cost[k][n] + (k - 1) * run_cost, k))  # ties: fewer runs
    cuts, j = [], n
    while b > 0:
        cuts.append(j)
        j, b = back[b][j], b - 1
    return sorted(cuts)


def plan_buckets(attention_mask: torch.Tensor, max_buckets: int, min_saving: float = MIN_SAVING) -> list[torch.Tensor] | None:
    """Row indices of each bucket (shortest rows first), or None when one padded forward is best.
    Each run after the first must save at least `min_saving` of the one-forward positions: an extra
    forward has a fixed cost (its kernels' launches, Python), about 1% of a 48-text training step here."""
    if max_buckets < 2 or attention_mask.dim() != 2 or attention_mask.shape[0] < 2:
        return None
    lengths = attention_mask.bool().sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = [int(v) for v in lengths[order]]
    one = len(sorted_lengths) * sorted_lengths[-1]
    cuts = best_cuts(sorted_lengths, min(max_buckets, len(sorted_lengths)), run_cost=min_saving * one)
    if len(cuts) < 2:
        return None
    starts = [0, *cuts[:-1]]
    return [order[s:e] for s, e in zip(starts, cuts)]


def token_only(inputs: dict, attention_mask: torch.Tensor) -> bool:
    """True when every tensor of `inputs` is per row and per position ([B, L]: ids, mask, positions): such
    inputs can be cut into rows. Image inputs (pixel values, image sizes) are left as one forward."""
    return all(not isinstance(v, torch.Tensor) or v.shape[:2] == attention_mask.shape for v in inputs.values())
