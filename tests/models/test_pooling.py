"""Pooling reads the attention mask: last_token_pool and the pooler classes (last token, mean, a
designated token) on left, right and mixed padding against python-loop references; errors; configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from mmembed.errors import ConfigError
from mmembed.models.pooling import LastTokenPooler, MeanPooler, TokenPooler, last_token_index, last_token_pool


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


# ---- the pooler classes: one call signature, each against a python-loop reference ----

EMB = 7  # the designated token's id in these hand-made batches
MASKS = {
    "left": [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]],
    "right": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]],
    "mixed": [[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]],
}


def _ids_with_token(mask: torch.Tensor) -> torch.Tensor:
    """Ids 1..5 on real tokens; EMB at every row's first and last real position (so the last occurrence
    differs from the first wherever a row has two tokens), and EMB in the padding too, which must not count."""
    ids = torch.where(mask.bool(), torch.arange(mask.shape[1]).remainder(5)[None] + 1, EMB)
    for b, row in enumerate(mask.tolist()):
        real = [t for t, m in enumerate(row) if m]
        ids[b, real[0]] = EMB
        ids[b, real[-1] - 1 if len(real) > 2 else real[-1]] = EMB
    return ids


def ref_last(hidden, mask, ids):
    return torch.stack([hidden[b, max(t for t, m in enumerate(row) if m)] for b, row in enumerate(mask.tolist())])


def ref_mean(hidden, mask, ids):
    rows = []
    for b, row in enumerate(mask.tolist()):
        real = [hidden[b, t] for t, m in enumerate(row) if m]
        rows.append(sum(real) / len(real))
    return torch.stack(rows)


def ref_token(hidden, mask, ids):
    rows = []
    for b, row in enumerate(mask.tolist()):
        last = max(t for t, m in enumerate(row) if m and int(ids[b, t]) == EMB)
        rows.append(hidden[b, last])
    return torch.stack(rows)


POOLERS = {
    "last": (LastTokenPooler(), ref_last),
    "mean": (MeanPooler(), ref_mean),
    "token": (TokenPooler("<emb>", token_id=EMB), ref_token),
}


@pytest.mark.parametrize("padding", sorted(MASKS))
@pytest.mark.parametrize("name", sorted(POOLERS))
def test_pooler_matches_loop_reference(name, padding):
    pooler, reference = POOLERS[name]
    mask = torch.tensor(MASKS[padding])
    hidden = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0))
    ids = _ids_with_token(mask)
    torch.testing.assert_close(pooler(hidden, mask, ids), reference(hidden, mask, ids))
    torch.testing.assert_close(pooler(hidden, mask.bool(), ids), reference(hidden, mask, ids))


def test_mean_pooler_hand_computed_and_ignores_padding():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    hidden = _hidden(2, 4)
    hidden[0, 0] = hidden[0, 3] = 1e6  # padding states: any leak would show
    expected = torch.tensor([[1.5, -1.5, 0.5], [101.5, -101.5, 0.5]])
    torch.testing.assert_close(MeanPooler()(hidden, mask, None), expected)


def test_mean_pooler_keeps_dtype():
    mask = torch.tensor([[1, 1, 0]])
    pooled = MeanPooler()(_hidden(1, 3).to(torch.bfloat16), mask, None)
    assert pooled.dtype == torch.bfloat16
    assert pooled.float().tolist() == [[0.5, -0.5, 0.5]]


def test_token_pooler_takes_the_last_occurrence_not_the_first_or_the_last_token():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    ids = torch.tensor([[EMB, 3, EMB, 4, 5, EMB], [EMB, 2, EMB, 3, EMB, 6]])  # EMB in padding (col 5 / col 0)
    hidden = _hidden(2, 6)
    pooled = TokenPooler("<emb>", token_id=EMB)(hidden, mask, ids)
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 2], hidden[1, 4]]))


def test_token_pooler_row_without_the_token_names_it():
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    ids = torch.tensor([[1, EMB, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] .*'<emb>' token \(id 7\)"):
        TokenPooler("<emb>", token_id=EMB)(_hidden(2, 3), mask, ids)
    # A token only in the padding is missing too.
    with pytest.raises(ConfigError, match="'<emb>'"):
        TokenPooler("<emb>", token_id=EMB)(_hidden(1, 3), torch.tensor([[0, 1, 1]]), torch.tensor([[EMB, 1, 2]]))


@pytest.mark.parametrize("name", sorted(POOLERS))
def test_every_pooler_rejects_an_empty_row(name):
    pooler = POOLERS[name][0]
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="no tokens"):
        pooler(_hidden(2, 3), mask, torch.full((2, 3), EMB))


def test_unbound_token_pooler_says_to_bind():
    with pytest.raises(ConfigError, match=r"bind\(tokenizer\)"):
        TokenPooler("<emb>")(_hidden(1, 2), torch.ones(1, 2), torch.full((1, 2), EMB))


def test_bind_resolves_the_id_from_the_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    with pytest.raises(ConfigError, match=r"pooler.token='<emb>' is \d+ tokens"):
        TokenPooler("<emb>").bind(tokenizer)  # not yet a token of this tokenizer
    tokenizer.add_tokens(["<emb>"], special_tokens=True)
    bound = TokenPooler("<emb>").bind(tokenizer)
    assert bound.token_id == tokenizer.convert_tokens_to_ids("<emb>") == len(tokenizer) - 1
    with pytest.raises(ConfigError, match="drop token_id"):
        TokenPooler("<emb>", token_id=3).bind(tokenizer)
    assert LastTokenPooler().bind(tokenizer) == LastTokenPooler()
    assert MeanPooler().bind(tokenizer) == MeanPooler()


@pytest.mark.parametrize("name", sorted(POOLERS))
def test_poolers_pickle(name):
    pooler = POOLERS[name][0]
    copy = pickle.loads(pickle.dumps(pooler))
    assert copy == pooler
    mask = torch.tensor(MASKS["mixed"])
    hidden, ids = torch.randn(3, 6, 4), _ids_with_token(mask)
    torch.testing.assert_close(copy(hidden, mask, ids), pooler(hidden, mask, ids))


def test_hydra_pooler_group_instantiates_each_pooler():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf" / "pooler"
    made = {path.stem: instantiate(OmegaConf.load(path)) for path in sorted(conf.glob("*.yaml"))}
    assert made == {"last_token": LastTokenPooler(), "mean": MeanPooler(), "token": TokenPooler("<emb>")}
