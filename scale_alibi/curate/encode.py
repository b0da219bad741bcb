"""Sensor units to 8-bit PNG tiles: one documented mapping per layer, shared by the build and the tests.

- ``s2``: the ESA true-colour ``visual`` asset is already 8-bit RGB DN; values pass through
  (rounded, clipped to 0..255).
- ``s1``: linear gamma0 (VV, VH) -> dB -> 8 bits: R = 0, G = VV over ``S1_VV_DB``, B = VH over
  ``S1_VH_DB``. Values outside the range are **clipped** (a saturated bright pixel is 255, never
  wrapped to 0 as the paper's DN/1000*256 mapping did); linear <= 0 maps to 0.
- ``naip``: RGBN DN -> the RGB bands, passed through.

Encoding writes the PNG itself: every row filtered with PNG's Up filter (difference to the row
above) in numpy, the rows deflated by libdeflate at level 1 (imagecodecs), then the IHDR / IDAT / IEND
chunks. Encoding bounds curation speed on one core; `python benchmarks/encode_bench.py` compares it
with libpng through imagecodecs (zlib level 1, RLE strategy, SUB filter: the build's encoder before)
and with Pillow's default level 6. Any PNG decoder reads the tiles; the pixels are exact (lossless).
"""

from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np

# dB ranges of the S1 mapping (typical IW RTC values; see docs/curation.md).
S1_VV_DB: tuple[float, float] = (-25.0, 3.0)
S1_VH_DB: tuple[float, float] = (-30.0, -2.0)
PNG_LEVEL = 1  # libdeflate's compression level of the IDAT stream
PNG_ENCODER = "up filter, libdeflate"  # recorded in the manifest's metadata with PNG_LEVEL
PNG_FILTER_UP = 2  # PNG row filter type 2 (Up): on imagery as small as SUB, and cheaper to compute
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _db_to_byte(linear: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(np.where(linear > 0, linear, np.nan))
    scaled = (db - lo) * (255.0 / (hi - lo))
    # NaN (linear <= 0 or nodata) -> 0; above the range -> 255 (clip, never wrap).
    return np.clip(np.nan_to_num(np.rint(scaled), nan=0.0), 0, 255).astype(np.uint8)


def rgb8(layer: str, hwc: np.ndarray) -> np.ndarray:
    """Map an (H, W, bands) array in sensor units to an (H, W, 3) uint8 RGB image for `layer`."""
    if layer == "s1":
        out = np.zeros(hwc.shape[:2] + (3,), np.uint8)
        out[..., 1] = _db_to_byte(hwc[..., 0].astype(np.float32, copy=False), *S1_VV_DB)
        out[..., 2] = _db_to_byte(hwc[..., 1].astype(np.float32, copy=False), *S1_VH_DB)
        return out
    if layer in ("s2", "naip"):
        rgb = hwc[..., :3]
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb)
    raise ValueError(f"unknown layer {layer!r}")


def to_rgb8(layer: str, data: np.ndarray) -> np.ndarray:
    """Map a (bands, H, W) array in sensor units (the truth renderer's layout) to (H, W, 3) uint8 RGB."""
    return rgb8(layer, np.moveaxis(np.asarray(data), 0, -1))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def encode_png(rgb: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Encode an (H, W, 3) uint8 image (or (H, W[, 1|2|4])) as 8-bit PNG bytes (deterministic for a given
    imagecodecs build)."""
    img = np.asarray(rgb)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in PNG_COLOUR_TYPE or 0 in img.shape:
        raise ValueError(f"cannot encode a {img.dtype} array of shape {img.shape} as PNG; give (H, W, 1-4) uint8")
    h, w, c = img.shape
    rows = img.reshape(h, w * c)
    # Filter byte, then the row minus the row above (uint8 arithmetic wraps, as PNG's filters do).
    filtered = np.empty((h, w * c + 1), np.uint8)
    filtered[:, 0] = PNG_FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    # A zlib stream, as IDAT holds; imagecodecs reads any buffer (its stubs name bytes only).
    idat = imagecodecs.deflate_encode(filtered, level=level)  # type: ignore[arg-type]
    header = struct.pack(">IIBBBBB", w, h, 8, PNG_COLOUR_TYPE[c], 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", bytes(idat)), _chunk(b"IEND", b"")))


def encode_tile(layer: str, data: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Sensor units (bands, H, W) -> PNG bytes of `layer` (what the build writes and the tests compare)."""
    return encode_png(to_rgb8(layer, data), level=level)


def encode_hwc(layer: str, hwc: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Sensor units (H, W, bands) -> PNG bytes of `layer` (the build's layout)."""
    return encode_png(rgb8(layer, hwc), level=level)


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an (H, W, C) uint8 array."""
    return np.asarray(imagecodecs.png_decode(data))
