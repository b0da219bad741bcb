"""The tile encoder writes PNGs that other decoders read back exactly (Pillow and libpng as oracles)."""

from __future__ import annotations

import io
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from scale_alibi.curate.encode import encode_png


def _pillow(png: bytes) -> np.ndarray:
    Image.open(io.BytesIO(png)).verify()  # chunk CRCs, IEND
    img = Image.open(io.BytesIO(png))
    img.load()
    return np.asarray(img)


@pytest.mark.parametrize("shape", [(256, 256, 3), (1, 1, 3), (7, 5, 3), (9, 4, 4), (6, 3, 2), (5, 8, 1), (5, 8)])
def test_png_round_trips_exactly_through_other_decoders(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[0] = 255  # the row below takes differences that wrap around 0
    png = encode_png(img)
    assert np.array_equal(_pillow(png).reshape(img.shape), img)
    assert np.array_equal(np.asarray(imagecodecs.png_decode(png)).reshape(img.shape), img)


def test_png_of_a_strided_view_is_the_view():
    """The build encodes quarters of a NAIP block (non-contiguous views)."""
    block = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    quarter = block[32:, 32:]
    assert np.array_equal(_pillow(encode_png(quarter)), quarter)


def test_png_idat_is_one_zlib_stream_of_filtered_rows():
    """IHDR says 8-bit RGB, and the IDAT stream inflates (zlib) to one filter byte per row plus its pixels."""
    img = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    png = encode_png(img)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ihdr = png[16:29]
    assert (int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big"), ihdr[8], ihdr[9]) == (12, 10, 8, 2)
    start = png.index(b"IDAT")
    length = int.from_bytes(png[start - 4:start], "big")
    raw = zlib.decompress(png[start + 4:start + 4 + length])
    assert len(raw) == 10 * (1 + 12 * 3)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.uint16), np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_png_refuses_what_it_cannot_encode_as_8_bit(bad):
    with pytest.raises(ValueError, match="cannot encode"):
        encode_png(bad)
