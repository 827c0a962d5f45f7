"""Poolers: [B, T, D] last hidden states -> [B, D] one vector per row (not normalised).

Every pooler has one call signature, `pooler(hidden, attention_mask, input_ids)`, and reads the
attention mask rather than assuming a padding side, so left, right and mixed padding are all
correct. `LastTokenPooler` is E5-V's (the default), `TokenPooler` takes the state of a designated
token such as MM-GEM's appended `[EMB]`, `MeanPooler` averages the real tokens.

Poolers are small frozen dataclasses (picklable, so DataLoader workers and Hydra can carry them).
`bind(tokenizer)` returns a pooler ready for that tokenizer: `TokenPooler` resolves its token id
there; the others need nothing and return themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mmembed.errors import ConfigError


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: the last 1 in the mask, wherever the padding sits.

    With left padding that is the final column; with right padding it is mask.sum - 1. Reading the
    mask (rather than assuming a padding side) keeps both correct, and mixed batches too.
    """
    _check_mask(attention_mask)
    seq_len = attention_mask.shape[1]
    return seq_len - 1 - attention_mask.flip(dims=[1]).to(torch.int64).argmax(dim=1)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] hidden states -> [B, D] state of each row's last real token."""
    return _take(hidden, last_token_index(attention_mask))


def _check_mask(attention_mask: torch.Tensor) -> None:
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, seq], got {tuple(attention_mask.shape)}")
    if not bool((attention_mask.sum(dim=1) > 0).all()):
        raise ValueError("a row of the batch has no tokens (empty attention mask)")


def _take(hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """hidden[b, idx[b]] for every row b."""
    idx = idx.to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


@dataclass(frozen=True)
class LastTokenPooler:
    """The state of each row's last real token (E5-V: the prompt ends where the one-word answer starts)."""

    def bind(self, tokenizer) -> LastTokenPooler:
        return self

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor, input_ids=None) -> torch.Tensor:
        return last_token_pool(hidden, attention_mask)


@dataclass(frozen=True)
class MeanPooler:
    """The mean of the real tokens' states (padding excluded). Summed in float32 so long bf16 rows
    do not lose precision; returned in the hidden states' dtype like the other poolers."""

    def bind(self, tokenizer) -> MeanPooler:
        return self

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor, input_ids=None) -> torch.Tensor:
        _check_mask(attention_mask)
        weights = attention_mask.to(hidden.device).bool().float()
        total = torch.einsum("bt,btd->bd", weights, hidden.float())
        return (total / weights.sum(dim=1, keepdim=True)).to(hidden.dtype)


@dataclass(frozen=True)
class TokenPooler:
    """The state at the LAST occurrence of `token` among each row's real tokens (MM-GEM's `[EMB]`).

    The token must be one token of the tokenizer (add it as a special token and resize the model's
    embeddings) and the prompt must contain it, e.g. a text template ending with it. `token_id` is
    resolved by `bind(tokenizer)`, or given directly.
    """

    token: str = "<emb>"
    token_id: int | None = None

    def bind(self, tokenizer) -> TokenPooler:
        ids = tokenizer(self.token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(
                f"pooler.token={self.token!r} is {len(ids)} tokens for this tokenizer ({ids}), not one: add it "
                f"(tokenizer.add_special_tokens({{'extra_special_tokens': [{self.token!r}]}}) and "
                "model.resize_token_embeddings(len(tokenizer))) or name a token the tokenizer has"
            )
        if self.token_id is not None and self.token_id != ids[0]:
            raise ConfigError(
                f"pooler.token_id={self.token_id} but this tokenizer maps {self.token!r} to {ids[0]}; drop token_id"
            )
        return dataclasses.replace(self, token_id=int(ids[0]))

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor, input_ids=None) -> torch.Tensor:
        if self.token_id is None:
            raise ConfigError(f"TokenPooler({self.token!r}) has no token id: call .bind(tokenizer) first")
        if input_ids is None:
            raise ValueError(f"the {self.token!r} token pooler needs input_ids to find the token")
        _check_mask(attention_mask)
        hits = (input_ids == self.token_id) & attention_mask.bool()  # padding never counts
        missing = (~hits.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            raise ConfigError(
                f"row(s) {missing} of the batch have no {self.token!r} token (id {self.token_id}) for the token "
                "pooler: the prompt must contain it (e.g. end the text template with it) and truncation must keep it"
            )
        seq_len = hits.shape[1]
        return _take(hidden, seq_len - 1 - hits.flip(dims=[1]).to(torch.int64).argmax(dim=1))


Pooler = LastTokenPooler | MeanPooler | TokenPooler
