"""Image-span holes: placeholder positions a projector leaves empty (the label-word projector's label text is
shorter than its span). They leave attention and take no position, so the LLM reads the image tokens exactly
as if they were written into the prompt."""

from __future__ import annotations

import torch


def holes_of(input_ids: torch.Tensor, image_token_id: int, valid: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the placeholder positions whose image token is not valid (in placeholder order)."""
    holes = torch.zeros_like(input_ids, dtype=torch.bool)
    holes[input_ids == image_token_id] = ~valid.reshape(-1).to(input_ids.device)
    return holes


def without_holes(holes: torch.Tensor, attention_mask: torch.Tensor | None,
                  position_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask and position ids of a sequence whose holes [B, T] are taken out: the holes leave
    attention and take no position. The mask may be wider than the inputs (a cached prefix before them:
    prefix.py); given position ids are taken to count every input column, as the prefix cache's and plain
    arange positions do."""
    width = holes.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones_like(holes, dtype=torch.long)
    cached = attention_mask.shape[1] - width
    full = torch.cat([holes.new_zeros(holes.shape[0], cached), holes], dim=1) if cached else holes
    attention_mask = attention_mask * ~full
    if position_ids is None:
        return attention_mask, attended_positions(attention_mask)[:, cached:]
    return attention_mask, (position_ids - holes.long().cumsum(-1)).clamp(min=0)


def attended_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count attended tokens only (padding and holes take none)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
