"""Last-token pooling that is correct for left and right padding."""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: the last 1 in the mask, wherever the padding sits.

    With left padding that is the final column; with right padding it is mask.sum - 1. Reading the
    mask (rather than assuming a padding side) keeps both correct, and mixed batches too.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq], got {tuple(attention_mask.shape)}")
    if not bool((attention_mask.sum(dim=1) > 0).all()):
        raise ValueError("a row of the batch has no tokens (empty attention mask)")
    seq_len = attention_mask.shape[1]
    return seq_len - 1 - attention_mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] hidden states -> [B, D] state of each row's last real token."""
    idx = last_token_index(attention_mask).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
