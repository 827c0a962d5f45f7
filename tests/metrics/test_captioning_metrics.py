"""caption_scores: hand-computed BLEU and CIDEr, the tokenisers, the Java scorers and the id checks.

BLEU here is pycocoevalcap's corpus BLEU ('closest' reference length): clipped n-gram matches and
hypothesis n-grams are summed over the corpus before the precisions are taken, and it smooths every
precision as (matches + 1e-15) / (total + 1e-9), hence rel=1e-6 on the hand values.
CIDEr (pycocoevalcap's, i.e. CIDEr-D): per n = 1..4, cosine of tf-idf vectors (idf = log(#images / df)
over the references), clipped, times a length penalty; mean over n, over references, x10, then mean
over images; we report it x100.
"""

from __future__ import annotations

import math
import shutil

import pytest

from mmembed.errors import ConfigError, DataConfigError
from mmembed.metrics import captioning
from mmembed.metrics.captioning import caption_scores, simple_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs java on PATH")


def scores(predictions, references, **kwargs):
    return caption_scores(predictions, references, tokenizer="simple", java_scorers=False, **kwargs)


def test_identical_captions_give_bleu_100_and_hand_computed_cider():
    # "a" is in both images' references: idf log(2/2) = 0; every other n-gram has idf log(2/1).
    # A hypothesis identical to its single reference has cosine 1 for n = 1, 2, 3 and no 4-grams
    # (3 words), so each image scores 10 * (1 + 1 + 1 + 0) / 4 = 7.5 -> CIDEr x100 = 750.
    refs = {"a": ["A dog runs."], "b": ["a cat sleeps"]}
    out = scores({"a": "a dog runs", "b": "A cat sleeps!"}, refs)
    assert out["CIDEr"] == pytest.approx(750.0, abs=1e-9)
    long_refs = {1: ["a dog runs on the grass"], 2: ["two cats sleep on a red sofa"]}
    long_out = scores({1: "a dog runs on the grass", 2: "two cats sleep on a red sofa"}, long_refs)
    assert long_out["BLEU-4"] == pytest.approx(100.0, rel=1e-6)
    assert out["scorers"] == ["BLEU", "CIDEr"] and out["tokenizer"] == "simple" and out["num_images"] == 2


def test_cider_on_a_partly_wrong_caption_by_hand():
    # image a: hypothesis "a dog sleeps" vs reference "a dog runs". Unigrams: shared "dog" only
    # (weights log2 each, "a" weighs 0): cosine (log2)^2 / (sqrt2 log2)^2 = 1/2; bigrams: "a dog"
    # shared, "dog sleeps"/"dog runs" not: 1/2; trigrams 0; no 4-grams; equal lengths (no penalty):
    # 10 * (1/2 + 1/2 + 0 + 0) / 4 = 2.5. Image b is identical (7.5). Mean 5.0 -> x100 = 500.
    out = scores({"a": "a dog sleeps", "b": "a cat sleeps"}, {"a": ["a dog runs"], "b": ["a cat sleeps"]})
    assert out["CIDEr"] == pytest.approx(500.0, abs=1e-9)


def test_cider_averages_over_references():
    # image a gets two references; against "a dog runs" it scores 7.5 (as above), against
    # "dog runs" (no "a"): unigram cosine 1, bigram {"a dog", "dog runs"} . {"dog runs"} = 1/sqrt2,
    # trigram 0, and length 3 vs 2 costs exp(-1 / 72): the mean over the two references.
    refs = {"a": ["a dog runs", "dog runs"], "b": ["a cat sleeps"]}
    out = scores({"a": "a dog runs", "b": "a cat sleeps"}, refs)
    # idf: "a" in both images -> 0; "dog", "runs", "dog runs", "a dog", "a dog runs" only in a -> log 2
    second = 10 * (1 + 1 / math.sqrt(2) + 0 + 0) / 4 * math.exp(-1 / 72)
    assert out["CIDEr"] == pytest.approx(100 * ((7.5 + second) / 2 + 7.5) / 2, abs=1e-9)


def test_bleu_by_hand():
    # hyp "the cat sat on the mat today" vs ref "the cat sat on a mat today" (7 words each):
    # clipped matches 6/7, 4/6, 2/5, 1/4; no brevity penalty.
    one = scores({0: "the cat sat on the mat today"}, {0: ["the cat sat on a mat today"]})
    assert one["BLEU-1"] == pytest.approx(100 * 6 / 7, rel=1e-6)
    assert one["BLEU-4"] == pytest.approx(100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25, rel=1e-6)
    # hyp "the cat sat on the mat" (6) vs refs of 7 and 9 words: the closest (7) sets the brevity
    # penalty exp(1 - 7/6); matches 6/6, 4/5, 3/4, 2/3.
    short = {1: "the cat sat on the mat"}
    refs = {1: ["the cat sat on the red mat", "a cat was sitting on a mat by the door"]}
    want = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert scores(short, refs)["BLEU-4"] == pytest.approx(100 * want, rel=1e-6)
    # corpus level: counts are summed over both images before dividing; lengths 13 vs closest 7 + 7
    both = scores(
        {0: "the cat sat on the mat today", 1: "the cat sat on the mat"}, {0: ["the cat sat on a mat today"], **refs}
    )
    corpus = math.exp(1 - 14 / 13) * (12 / 13 * 8 / 11 * 5 / 9 * 3 / 7) ** 0.25
    assert both["BLEU-4"] == pytest.approx(100 * corpus, rel=1e-6)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A dog's ball, isn't it?", "a dog 's ball is n't it"),
        (
            'A boy in a "Mr. Potato" T-shirt (red) can\'t swim .',
            "a boy in a mr. potato t-shirt -lrb- red -rrb- ca n't swim",
        ),
        ("We cannot see the U.S. flag at 3.5 m; at&t...", "we can not see the u.s. flag at 3.5 m at & t"),
        ("A five o'clock shadow on a slip 'n' slide", "a five o'clock shadow on a slip 'n' slide"),
    ],
)
def test_simple_tokenizer_exact_output(text, tokens):
    assert simple_tokenize(text) == tokens


@needs_java
def test_simple_tokenizer_equals_ptb_on_flickr8k_captions(data_root):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    lines = (data_root / "flickr8k_224" / "text" / "Flickr8k.token.txt").read_text().splitlines()
    captions = [line.split("\t", 1)[1] for line in lines if "\t" in line]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    differ = [c for i, c in enumerate(captions) if ptb[i][0] != simple_tokenize(c)]
    assert len(captions) == 40460 and differ == []


@needs_java
def test_auto_uses_ptb_when_java_is_present():
    out = caption_scores({"a": "A dog runs."}, {"a": ["a dog runs", "A dog, running!"]}, java_scorers=False)
    assert out["tokenizer"] == "ptb"
    assert out["CIDEr"] == scores({"a": "A dog runs."}, {"a": ["a dog runs", "A dog, running!"]})["CIDEr"]


def test_without_java_the_simple_tokenizer_runs_and_java_scorers_are_skipped(monkeypatch):
    monkeypatch.setattr(captioning, "_java", lambda: None)
    out = caption_scores({"a": "a dog runs"}, {"a": ["a dog runs"]})
    assert out["tokenizer"] == "simple" and out["scorers"] == ["BLEU", "CIDEr"]
    assert out["skipped"] == {"METEOR": "needs `java` on PATH", "SPICE": "needs `java` on PATH"}
    with pytest.raises(ConfigError, match="needs `java`"):
        caption_scores({"a": "a dog runs"}, {"a": ["a dog runs"]}, tokenizer="ptb")


@pytest.mark.slow  # METEOR's JVM loads a 60 MB paraphrase table (~40 s here)
@needs_java
def test_meteor_runs_with_java_and_spice_says_what_it_lacks():
    refs = {1: ["a dog runs in the park"], 2: ["a cat sleeps on a sofa"]}
    out = caption_scores({1: "a dog runs in the park", 2: "a dog sleeps"}, refs)
    assert "METEOR" in out["scorers"]
    # METEOR 1.5's segment score of an exact match is 1; the corpus score here mixes in image 2's
    same = caption_scores({1: "a dog runs in the park", 2: "a cat sleeps on a sofa"}, refs)
    assert same["METEOR"] == pytest.approx(100.0, abs=1e-6) and out["METEOR"] < same["METEOR"] - 10
    if captioning._spice_missing_jars():
        assert "stanford-corenlp-3.6.0" in out["skipped"]["SPICE"]
    else:
        assert "SPICE" in out["scorers"]


@pytest.mark.parametrize(
    ("predictions", "references", "match"),
    [
        ({"a": "x", "b": "y"}, {"a": ["x"]}, r"1 predicted id\(s\) have no references \(first: \['b'\]\)"),
        ({"a": "x"}, {"a": ["x"], "c": ["z"]}, r"1 referenced id\(s\) have no prediction \(first: \['c'\]\)"),
        ({"a": "x"}, {"a": []}, "non-empty list"),
        ({"a": "x"}, {"a": "x"}, "non-empty list"),
        ({"a": ["x"]}, {"a": ["x"]}, "must be a string"),
        ({}, {}, "no predictions"),
    ],
)
def test_bad_inputs_raise_data_config_error(predictions, references, match):
    with pytest.raises(DataConfigError, match=match):
        scores(predictions, references)


def test_unknown_tokenizer_raises_config_error():
    with pytest.raises(ConfigError, match="tokenizer='nltk'"):
        caption_scores({"a": "x"}, {"a": ["x"]}, tokenizer="nltk")
