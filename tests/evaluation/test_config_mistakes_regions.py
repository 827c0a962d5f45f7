"""A bad `region_embedding` of the region benchmark is a one-line ConfigError, raised by `check()` before any file
is read (so before a model loads), and again by `run()`, which starts with `check()`."""

from __future__ import annotations

import re

import pytest

from mmembed.data.evalsets.layout import BenchmarkLayoutError
from mmembed.errors import ConfigError
from mmembed.evaluation.benchmarks.regions import EMBEDDINGS, RegionGroundingBenchmark


def _benchmark(tmp_path, region_embedding):
    # none of these files exist: a ConfigError (not a BenchmarkLayoutError about them) shows the setting is checked first
    return RegionGroundingBenchmark(name="toy_regions", format="flickr8k_token", captions=str(tmp_path / "captions.txt"),
                                    images=str(tmp_path / "images"), entities=str(tmp_path / "entities.jsonl.gz"),
                                    region_embedding=region_embedding)


def _message(value: str) -> str:
    return (f"benchmark 'toy_regions': region_embedding={value!r} is not one of ('auto', 'roi', 'crop') "
            "(auto: roi when the model has RoI pooling, else crop)")


@pytest.mark.parametrize("value", ["roi_align", "ROI", "box"])
def test_bad_region_embedding_is_refused_by_check(tmp_path, value):
    with pytest.raises(ConfigError, match=f"^{re.escape(_message(value))}$"):
        _benchmark(tmp_path, value).check()


def test_bad_region_embedding_is_refused_by_run_before_embedding(tmp_path):
    # the embedder is never touched: None would fail on its first use
    with pytest.raises(ConfigError, match=f"^{re.escape(_message('whole'))}$"):
        _benchmark(tmp_path, "whole").run(None, progress=False)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("roi", "roi"), ("crop", "crop"), ("", "auto"),
                                             (None, "auto")])
def test_allowed_region_embeddings_pass(tmp_path, value, expected):
    assert EMBEDDINGS == ("auto", "roi", "crop")
    bench = _benchmark(tmp_path, value)
    assert bench.region_vectors_how() == expected
    # past the setting, check() goes on to the (missing) files
    with pytest.raises(BenchmarkLayoutError, match="missing: captions.txt"):
        bench.check()
