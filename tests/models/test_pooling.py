"""last_token_pool reads the attention mask: left, right and mixed padding, and empty rows."""

from __future__ import annotations

import pytest
import torch

from mmembed.models.pooling import last_token_index, last_token_pool


def _hidden(batch: int, seq: int, dim: int = 3) -> torch.Tensor:
    # hidden[b, t] = [100 b + t, -(100 b + t), 0.5]: every position is recognisable.
    base = (100 * torch.arange(batch)[:, None] + torch.arange(seq)[None, :]).float()
    return torch.stack([base, -base, torch.full_like(base, 0.5)], dim=-1)[..., :dim]


def test_left_padding_takes_the_final_column():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    hidden = _hidden(3, 4)
    pooled = last_token_pool(hidden, mask)
    assert last_token_index(mask).tolist() == [3, 3, 3]
    torch.testing.assert_close(pooled, hidden[:, 3])


def test_right_padding_takes_the_last_real_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    hidden = _hidden(3, 4)
    pooled = last_token_pool(hidden, mask)
    assert last_token_index(mask).tolist() == [1, 3, 0]
    expected = torch.stack([hidden[0, 1], hidden[1, 3], hidden[2, 0]])
    torch.testing.assert_close(pooled, expected)
    # Not the naive final column for the padded rows.
    assert not torch.equal(pooled[0], hidden[0, -1])


def test_mixed_padding_in_one_batch():
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1],  # left padded
            [1, 1, 1, 0, 0],  # right padded
            [0, 1, 1, 1, 0],  # both sides
            [1, 1, 1, 1, 1],  # no padding
        ]
    )
    hidden = _hidden(4, 5)
    assert last_token_index(mask).tolist() == [4, 2, 3, 4]
    expected = torch.stack([hidden[0, 4], hidden[1, 2], hidden[2, 3], hidden[3, 4]])
    torch.testing.assert_close(last_token_pool(hidden, mask), expected)


def test_bool_and_float_masks_and_dtype_kept():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    hidden = _hidden(2, 3).to(torch.bfloat16)
    expected = torch.stack([hidden[0, 1], hidden[1, 2]])
    for m in (mask.bool(), mask.float(), mask.long()):
        pooled = last_token_pool(hidden, m)
        assert pooled.dtype == torch.bfloat16
        torch.testing.assert_close(pooled, expected)


def test_pooling_gradient_reaches_only_the_pooled_positions():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    hidden = _hidden(2, 3).requires_grad_(True)
    last_token_pool(hidden, mask).sum().backward()
    touched = hidden.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, True, False], [False, False, True]]


def test_all_zero_mask_row_is_an_error():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="no tokens"):
        last_token_pool(_hidden(2, 3), mask)


def test_mask_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        last_token_pool(_hidden(1, 3), torch.ones(1, 3, 1))
