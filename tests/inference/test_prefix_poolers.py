"""The prefix-cached fast path pools with the embedder's pooler and matches the plain forward for each.

Mean pooling averages over the prefix tokens too and a designated token may sit anywhere, so the
cache must hand the pooler the prefix's hidden states, not only pool the rest of the prompt.
"""

from __future__ import annotations

import pytest
import torch

from mmembed.inference import Embedder
from mmembed.inference.prefix import PrefixCache, verify
from mmembed.models.backbones import load_backbone
from mmembed.models.embedder import MLLMEmbedder
from mmembed.models.pooling import LastTokenPooler, MeanPooler, TokenPooler
from mmembed.models.prompts import PromptConfig

MIN_COS = 0.9999
EMB = "<emb>"
TEXTS = [
    "A cat.",
    "A man riding a red bicycle down a steep hill while his dog runs behind him, barking.",
    "Two birds on a wire.",
    f"A sentence that mentions the {EMB} token itself in the middle.",
    "Children play football in a muddy field after school on a rainy afternoon.",
]
# The text template ends with the token: MM-GEM's appended [EMB].
EMB_PROMPTS = PromptConfig(text=f"<sent>\nSummary above sentence in one word: {EMB}")


@pytest.fixture(scope="module")
def backbone(tiny_smol_llava_dir):
    """The tiny SmolLlava with `<emb>` added to its tokenizer and embeddings (left padded, as Embedder)."""
    backbone = load_backbone(str(tiny_smol_llava_dir), padding_side="left")
    backbone.tokenizer.add_tokens([EMB], special_tokens=True)
    torch.manual_seed(0)
    backbone.model.resize_token_embeddings(len(backbone.tokenizer))
    backbone.model.eval()
    return backbone


def fast_and_plain(backbone, pooler, prompts=EMB_PROMPTS) -> tuple[Embedder, MLLMEmbedder]:
    embedder = MLLMEmbedder(backbone, prompts, pooler=pooler)
    return Embedder(embedder, prefix_cache=True), embedder  # True: raise if the cache cannot be used


def count_prefix_calls(fast: Embedder) -> list[int]:
    """Record the batch sizes that went through the prefix cache (a split that fails falls back silently)."""
    calls, forward = [], fast.prefix.forward

    def counted(rest):
        calls.append(rest["attention_mask"].shape[0])
        return forward(rest)

    fast.prefix.forward = counted
    return calls


def plain_one_by_one(embedder: MLLMEmbedder, texts) -> torch.Tensor:
    """Reference: the plain forward on each text alone (no padding, no prefix cache)."""
    with torch.inference_mode():
        return torch.cat([embedder(**embedder.featurize_text([text])) for text in texts])


def assert_same_rows(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    cos = (got * expected).sum(-1)
    assert bool((cos >= MIN_COS).all()), cos.tolist()


@pytest.mark.parametrize(
    "pooler", [LastTokenPooler(), MeanPooler(), TokenPooler(EMB)], ids=["last_token", "mean", "token"]
)
def test_fast_path_matches_plain_forward(backbone, pooler):
    fast, plain = fast_and_plain(backbone, pooler)
    assert fast.prefix is not None and len(fast.prefix) >= 4
    assert fast.prefix.pooler == plain.pooler  # verification and encoding pool the embedder's way
    calls = count_prefix_calls(fast)
    got = fast.encode(texts=TEXTS, batch_size=2)  # length-sorted padded batches of 2, 2, 1
    assert calls == [2, 2, 1]
    assert_same_rows(got, plain_one_by_one(plain, TEXTS))
    # A padded batch through both paths directly, too.
    inputs = plain.featurize_text(TEXTS)
    assert bool((inputs["attention_mask"][:, 0] == 0).any())
    with torch.inference_mode():
        assert_same_rows(fast.prefix.forward(fast.prefix.split(inputs)), plain(**inputs))


def test_poolers_give_different_vectors(backbone):
    """Otherwise the test above could pass with a fast path that always pools the last token."""
    vectors = {
        name: fast_and_plain(backbone, pooler)[0].encode(texts=TEXTS[:3])
        for name, pooler in [("last", LastTokenPooler()), ("mean", MeanPooler()), ("token", TokenPooler(EMB))]
    }
    for a, b in [("last", "mean"), ("last", "token"), ("mean", "token")]:
        assert float((vectors[a] * vectors[b]).sum(-1).max()) < 0.99, (a, b)


def test_token_pooler_binds_to_the_added_token(backbone):
    _, plain = fast_and_plain(backbone, TokenPooler(EMB))
    assert plain.pooler.token_id == backbone.tokenizer.convert_tokens_to_ids(EMB) == len(backbone.tokenizer) - 1


def test_token_inside_the_cached_prefix_uses_the_prefix_states(backbone):
    """The token only in the system turn (the cached prefix): every row pools the prefix's state, which
    the cache computed once; it must equal what the plain forward computes at that position."""
    prompts = PromptConfig(system=f"Embed {EMB}")
    fast, plain = fast_and_plain(backbone, TokenPooler(EMB), prompts)
    assert plain.pooler.token_id in fast.prefix.ids.tolist()
    calls = count_prefix_calls(fast)
    got = fast.encode(texts=TEXTS[:3], batch_size=3)
    assert calls == [3]
    assert_same_rows(got, plain_one_by_one(plain, TEXTS[:3]))


def test_verify_compares_with_the_embedders_pooler(backbone):
    """A cache pooling differently from the embedder fails verification, so it is never switched on."""
    embedder = MLLMEmbedder(backbone, EMB_PROMPTS, pooler=MeanPooler())
    fast = Embedder(embedder, prefix_cache=True)
    mismatched = PrefixCache(
        backbone.body, fast.prefix.ids.tolist(), backbone.tokenizer.pad_token_id, embedder.device, LastTokenPooler()
    )
    assert verify(embedder, fast.prefix, MIN_COS) is None
    assert "differs from the plain forward" in verify(embedder, mismatched, MIN_COS)


def test_prompt_without_the_token_is_a_clear_error(backbone):
    embedder = MLLMEmbedder(backbone, PromptConfig(), pooler=TokenPooler(EMB))  # E5-V's prompt: no <emb>
    assert Embedder(embedder).prefix is None  # verification fails, so the cache stays off ...
    with pytest.raises(ValueError, match=f"no '{EMB}' token"):  # ... and the plain forward names the token
        embedder.encode_text(["A cat."])
