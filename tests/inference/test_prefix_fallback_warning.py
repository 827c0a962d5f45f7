"""An unexpected error while building or verifying the prefix cache (e.g. a transformers upgrade changed the
decoder's cache API) falls back to the plain forward with a warning that names transformers; `prefix_cache=True`
raises instead."""

from __future__ import annotations

import logging

import pytest

from mmembed.inference import prefix
from mmembed.inference.prefix import PrefixCache, build_prefix_cache

WARNING = "Falling back to the plain forward (same vectors, slower); check the installed transformers version."


def _failing(err: Exception):
    def fail(*args, **kwargs):
        raise err

    return fail


def test_tiny_model_gets_a_cache_when_nothing_fails(tiny_embedder, caplog):
    # the control: without the injected error below, this very model takes the fast path
    with caplog.at_level(logging.WARNING, logger=prefix.__name__):
        assert isinstance(build_prefix_cache(tiny_embedder.embedder, "auto"), PrefixCache)
    assert WARNING not in caplog.text


@pytest.mark.parametrize("target, err", [
    ("verify", RuntimeError("cache layout changed")),
    ("PrefixCache", TypeError("forward() got an unexpected keyword argument 'cache'")),
])
def test_unexpected_error_warns_and_falls_back(tiny_embedder, caplog, monkeypatch, target, err):
    monkeypatch.setattr(prefix, target, _failing(err))
    with caplog.at_level(logging.WARNING, logger=prefix.__name__):
        assert build_prefix_cache(tiny_embedder.embedder, "auto") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert WARNING in message
    assert f"(family smol_llava, which supports it): {type(err).__name__}: {err}." in message


def test_unexpected_error_raises_when_the_cache_is_required(tiny_embedder, monkeypatch):
    monkeypatch.setattr(prefix, "verify", _failing(RuntimeError("cache layout changed")))
    with pytest.raises(RuntimeError, match=r"^prefix caching is not available for .+: RuntimeError: cache layout "
                                           r"changed$"):
        build_prefix_cache(tiny_embedder.embedder, True)
