"""The image loader: every bad file is skipped-and-counted or a clear error; odd modes convert correctly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from mmembed.data.images import DEFAULT_MAX_PIXELS, load_image, to_rgb
from mmembed.errors import BadImageError, DataConfigError, SkipCounter

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


PNG = encode(Image.fromarray(PIXELS), "PNG")
JPEG = encode(Image.fromarray(PIXELS), "JPEG", quality=90)


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_images_never_load_silently():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for data in (PNG, JPEG):
        with pytest.raises(BadImageError, match="truncated"):
            load_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0))
def test_a_cut_file_is_an_error_or_the_complete_image(fmt, cut):
    """Whatever the cut point, we never get half an image: either an error or exactly the full decode."""
    data = PNG if fmt == "PNG" else JPEG
    full = np.asarray(load_image(data))
    cut_data = data[: int(len(data) * cut)]
    try:
        got = load_image(cut_data)
    except BadImageError:
        return
    np.testing.assert_array_equal(np.asarray(got), full)


def test_truncated_file_names_the_file(tmp_path):
    path = write(tmp_path, "half.jpg", JPEG[: len(JPEG) // 2])
    with pytest.raises(BadImageError, match=r"half\.jpg.*truncated") as err:
        load_image(path)
    assert isinstance(err.value, DataConfigError)  # the pipeline prints it without a traceback


def test_corrupt_png_data_and_jpeg_header(tmp_path):
    png = bytearray(PNG)
    png[PNG.index(b"IDAT") + 20] ^= 0xFF  # checksum no longer matches
    with pytest.raises(BadImageError, match="corrupt"):
        load_image(write(tmp_path, "bad.png", bytes(png)))
    jpeg = bytearray(JPEG)
    jpeg[2:40] = bytes(38)
    with pytest.raises(BadImageError, match="unreadable"):
        load_image(write(tmp_path, "bad.jpg", bytes(jpeg)))


def test_zero_byte_missing_and_folder(tmp_path):
    with pytest.raises(BadImageError, match=r"empty.jpg.*zero-byte"):
        load_image(write(tmp_path, "empty.jpg", b""))
    with pytest.raises(BadImageError, match=r"absent.jpg.*missing"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(BadImageError, match="missing: not a file"):
        load_image(tmp_path)


def test_skip_counts_and_remembers_the_first_files(tmp_path):
    skips = SkipCounter(keep=2)
    bad = [write(tmp_path, "e.png", b""), tmp_path / "gone.png", write(tmp_path, "t.png", PNG[:100])]
    good = write(tmp_path, "ok.png", PNG)
    out = [load_image(p, on_error="skip", skips=skips) for p in [*bad, good]]
    assert out[:3] == [None, None, None] and out[3].size == (32, 24)
    assert skips.count == 3
    assert skips.reasons == {"empty": 1, "missing": 1, "corrupt": 1}
    assert [path for path, _ in skips.examples] == [str(bad[0]), str(bad[1])]
    assert "skipped 3" in skips.summary() and "e.png" in skips.summary()


def test_on_error_is_validated():
    with pytest.raises(DataConfigError, match="on_error"):
        load_image(PNG, on_error="ignore")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    big = encode(Image.new("L", (4000, 3000)), "PNG")  # 12 MPixel of zeros: a small file
    with pytest.raises(BadImageError, match=r"too large: 4000x3000 = 12000000 pixels > max_pixels=1000000"):
        load_image(big, max_pixels=1_000_000)
    assert load_image(big, max_pixels=None).size == (4000, 3000)
    # Beyond PIL's own hard limit (2 x MAX_IMAGE_PIXELS) PIL's DecompressionBombError becomes ours.
    huge = encode(Image.new("1", (15000, 12000)), "PNG")  # 180 MPixel, about 30 kB
    with pytest.raises(BadImageError, match="too large"):
        load_image(huge, max_pixels=None)
    with pytest.raises(BadImageError, match=f"max_pixels={DEFAULT_MAX_PIXELS}"):
        load_image(encode(Image.new("1", (10000, 9000)), "PNG"))  # 90 MPixel: PIL only warns


def test_cmyk_converts_to_the_right_colour(tmp_path):
    red = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    for fmt in ("JPEG", "TIFF"):
        rgb = np.asarray(load_image(write(tmp_path, f"cmyk.{fmt.lower()}", encode(red, fmt))))
        assert rgb.shape == (8, 8, 3)
        assert np.abs(rgb.astype(int) - [255, 0, 0]).max() <= 2


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (255, 0, 0, 255))  # one opaque red pixel
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    rgb = np.asarray(load_image(encode(rgba, "PNG")))
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[1, 1]) == (255, 255, 255)  # transparent -> white, not black or red
    assert all(abs(int(v) - 127) <= 1 for v in rgb[0, 1])
    la = Image.new("LA", (2, 2), (0, 0))
    assert tuple(np.asarray(load_image(la))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0  # index 0 (blue) is transparent
    for src in (p, encode(p, "PNG"), encode(p, "GIF")):
        rgb = np.asarray(load_image(src))
        assert tuple(rgb[0, 0]) == (0, 255, 0)
        assert tuple(rgb[3, 3]) == (255, 255, 255)
    opaque = Image.new("P", (2, 2), 1)
    opaque.putpalette([0, 0, 0] + [10, 20, 30] + [0, 0, 0] * 254)
    assert tuple(np.asarray(load_image(opaque))[0, 0]) == (10, 20, 30)


def test_16_bit_and_grayscale_keep_their_range():
    ramp16 = np.linspace(0, 65535, 64 * 4).reshape(4, 64).astype(np.uint16)
    img16 = Image.fromarray(ramp16)
    assert img16.mode == "I;16"
    for src in (img16, encode(img16, "PNG")):
        rgb = np.asarray(load_image(src))
        assert rgb.dtype == np.uint8 and rgb.shape == (4, 64, 3)
        assert rgb.min() == 0 and rgb.max() == 255
        np.testing.assert_allclose(rgb[..., 0].astype(float), ramp16 / 257.0, atol=1)  # scaled, not clipped
        assert (rgb[..., 0] == rgb[..., 2]).all()
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    rgb = np.asarray(load_image(encode(gray, "PNG")))
    np.testing.assert_array_equal(rgb[..., 1], np.arange(256).reshape(16, 16))
    assert np.asarray(load_image(Image.new("1", (3, 3), 1))).min() == 255
    as_i = Image.fromarray(np.array([[0, 70000, -5, 255]], dtype=np.int32))  # mode I, beyond 16 bits
    assert as_i.mode == "I"
    assert np.asarray(load_image(as_i))[0, :, 0].tolist() == [0, 255, 0, 1]
    as_f = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(load_image(as_f))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_pil_input_is_copied_not_aliased():
    src = Image.fromarray(PIXELS)
    out = load_image(src)
    out.putpixel((0, 0), (1, 2, 3))
    assert src.getpixel((0, 0)) == tuple(PIXELS[0, 0])


def test_formats_outside_the_allow_list_are_not_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # EPS would run Ghostscript
    with pytest.raises(BadImageError, match="allowed format"):
        load_image(eps)
    tga = encode(Image.fromarray(PIXELS), "TGA")
    with pytest.raises(BadImageError, match="allowed format"):
        load_image(tga)
    assert load_image(tga, formats=("TGA",)).size == (32, 24)


def test_load_truncated_images_switched_on_by_someone_else_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(BadImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(PNG)


def _mutations():
    """Valid files of each allowed format, then flipped / dropped / inserted bytes."""
    seeds = [PNG, JPEG] + [encode(Image.fromarray(PIXELS), fmt) for fmt in ("GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO")]
    base = st.sampled_from(seeds)
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["set", "del", "ins"])), max_size=6)
    return st.tuples(base, edits)


def _apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, value, kind in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == "set":
            out[i] = value
        elif kind == "del":
            del out[i]
        else:
            out.insert(i, value)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(case=_mutations())
def test_mutated_files_never_raise_anything_but_our_error(case):
    data = _apply(*case)
    try:
        img = load_image(data, max_pixels=4_000_000)
    except BadImageError:
        assert load_image(data, on_error="skip", max_pixels=4_000_000) is None
        return
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= 4_000_000
    img.tobytes()  # fully decoded


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_but_our_error(data):
    try:
        img = load_image(data)
    except BadImageError:
        return
    assert img.mode == "RGB"


def test_to_rgb_refuses_modes_without_rgb_meaning():
    class Odd:
        mode = "XYZ"
        size = (1, 1)
        filename = "odd"

        def convert(self, mode):
            raise ValueError("conversion not supported")

    with pytest.raises(BadImageError, match="unsupported mode: XYZ"):
        to_rgb(Odd())
