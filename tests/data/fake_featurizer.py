"""A featurizer stand-in for collator tests: "tokens" are characters, featurising returns the strings."""

from __future__ import annotations


class CharFeaturizer:
    def __init__(self):
        self.calls: list[list[str]] = []

    def truncate(self, texts, max_tokens):
        return [t[:max_tokens] for t in texts] if max_tokens else list(texts)

    def featurize_text(self, texts):
        self.calls.append(list(texts))
        return list(texts)


def text_pair_collator(max_tokens=None, use_hard_negatives=True):
    from mmembed.data.collate import ObjectiveCollator, TextPairRows
    from mmembed.objectives import TextPairInfoNCE

    featurizer = CharFeaturizer()
    collate = ObjectiveCollator(TextPairRows(featurizer, max_tokens), TextPairInfoNCE(0.05, use_hard_negatives), featurizer)
    return collate, featurizer
