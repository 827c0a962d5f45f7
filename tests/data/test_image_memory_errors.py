"""Running out of memory while decoding an image is not a bad image: it propagates under on_error=skip."""

from __future__ import annotations

import pytest
from PIL import Image

from mmembed.data import images
from mmembed.errors import SkipCounter


def test_memory_error_is_raised_not_counted_as_a_skipped_image(tmp_path, monkeypatch):
    path = tmp_path / "ok.png"
    Image.new("RGB", (8, 8), "red").save(path)
    skips = SkipCounter()
    assert images.load_image(path, on_error="skip", skips=skips) is not None and skips.count == 0

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(images.Image, "open", out_of_memory)
    with pytest.raises(MemoryError):
        images.load_image(path, on_error="skip", skips=skips)
    assert skips.count == 0

    def corrupt(*args, **kwargs):  # what PIL's plugins raise for a broken file: still a skipped image
        raise SyntaxError("broken PNG chunk")

    monkeypatch.setattr(images.Image, "open", corrupt)
    assert images.load_image(path, on_error="skip", skips=skips) is None and skips.count == 1
