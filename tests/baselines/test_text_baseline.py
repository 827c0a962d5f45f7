"""The MiniLM baseline through sentence-transformers gives the vectors of the former hand-written encoder.

The former implementation (plain transformers: mean of token states over the attention mask, then L2
normalisation, max 256 tokens) is kept here as the reference; a few of its values, recorded before the
switch, are pinned as well.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmembed.baselines.text import MeanPoolTextEmbedder, SentenceTransformerTextEmbedder
from mmembed.models.text_encoders import packaged_minilm_dir

SENTENCES = [
    "A man is playing a guitar.",
    "a woman slices an onion .",
    "The quick brown fox jumps over the lazy dog",
    "Ünïcödé and emoji 🙂 text",
    "",
]
# Recorded with the former MeanPoolTextEmbedder (transformers mean pooling) before the switch.
FORMER_FIRST3 = torch.tensor(
    [
        [0.021664, -0.004864, -0.009649],
        [-0.118563, -0.036587, -0.005981],
        [0.035497, 0.061286, 0.052692],
        [-0.015954, 0.004665, 0.048977],
        [-0.118838, 0.048299, -0.002548],
    ]
)
FORMER_COS_01, FORMER_COS_02 = 0.1083039, -0.0532225


def _former_mean_pool(texts: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    folder = str(packaged_minilm_dir())
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerTextEmbedder:
    return MeanPoolTextEmbedder().eval()


def test_same_vectors_as_the_former_implementation(embedder):
    with torch.inference_mode():
        got = embedder.encode_text(SENTENCES)
    assert got.shape == (5, 384) and got.dtype == torch.float32
    cosine = (got * _former_mean_pool(SENTENCES)).sum(-1)
    assert cosine.min().item() >= 0.9999
    assert torch.allclose(got[:, :3], FORMER_FIRST3, atol=2e-6)
    assert (got[0] @ got[1]).item() == pytest.approx(FORMER_COS_01, abs=1e-5)
    assert (got[0] @ got[2]).item() == pytest.approx(FORMER_COS_02, abs=1e-5)


def test_batching_does_not_change_vectors(embedder):
    together = embedder.encode_text(SENTENCES[:3])
    alone = torch.cat([embedder.encode_text([s]) for s in SENTENCES[:3]])
    assert torch.allclose(together, alone, atol=1e-5)


def test_interface_the_evaluation_runner_uses(embedder):
    assert MeanPoolTextEmbedder is SentenceTransformerTextEmbedder  # the name src/eval.py imports
    assert embedder.name_or_path == str(packaged_minilm_dir())
    assert embedder.max_length == 256  # the folder's own sentence_bert_config.json
    # encode.py sends objects with an `encode` method down the MLLM Embedder path: this one must not have it.
    assert not hasattr(embedder, "encode")
    assert embedder.encode_text([]).shape == (0, 384)
    assert embedder.tokenizer("a dog")["input_ids"] == [101, 1037, 3899, 102]  # BERT uncased: [CLS] a dog [SEP]


def test_max_length_override_cuts_inputs():
    short = MeanPoolTextEmbedder(max_length=4)
    long_text = "a man is playing a large guitar on the stage"
    cut = short.encode_text([long_text])
    # 4 tokens = [CLS] a man [SEP]
    assert torch.allclose(cut, _former_mean_pool(["a man"]), atol=1e-5)


@pytest.mark.slow
def test_stsb_test_spearman(data_root):
    """The whole STS-B test split (1,379 pairs) through the evaluation runner: 82.03 (about 90 s on 2 CPUs)."""
    from mmembed.evaluation.benchmarks.sts import STSBenchmark

    bench = STSBenchmark(name="stsb", format="stsb", path=str(data_root / "sts" / "senteval_processed" / "STSBenchmark"))
    result = bench.run(MeanPoolTextEmbedder().eval(), batch_size=32, progress=False)
    assert result["protocol"]["pairs"] == 1379
    assert result["metrics"]["spearman"] == pytest.approx(82.03, abs=0.01)


def test_capabilities_say_text_only(embedder):
    from mmembed.models.encoder import capabilities

    # sentence-transformers' model has no image path: evaluation must refuse image benchmarks for it
    assert capabilities(embedder) == frozenset({"text"})
