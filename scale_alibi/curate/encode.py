"""Sensor units to 8-bit PNG tiles: one documented mapping per layer, shared by the build and the tests.

- ``s2``: the ESA true-colour ``visual`` asset is already 8-bit RGB DN; values pass through
  (rounded, clipped to 0..255).
- ``s1``: linear gamma0 (VV, VH) -> dB -> 8 bits: R = 0, G = VV over ``S1_VV_DB``, B = VH over
  ``S1_VH_DB``. Values outside the range are **clipped** (a saturated bright pixel is 255, never
  wrapped to 0 as the paper's DN/1000*256 mapping did); linear <= 0 maps to 0.
- ``naip``: RGBN DN -> the RGB bands, passed through.

Encoding uses imagecodecs' PNG encoder at zlib level 1 with the RLE strategy and SUB filter
(encoding bounds curation speed; `python benchmarks/encode_bench.py` measured 7.0x Pillow's default
level 6 and 4.8x imagecodecs' default strategy at level 1, at 1.03x / 0.94x their bytes).
"""

from __future__ import annotations

import imagecodecs
import numpy as np

# dB ranges of the S1 mapping (typical IW RTC values; see docs/curation.md).
S1_VV_DB: tuple[float, float] = (-25.0, 3.0)
S1_VH_DB: tuple[float, float] = (-30.0, -2.0)
PNG_LEVEL = 1
# zlib RLE strategy + SUB filter (OpenCV's fast settings): faster than zlib's default strategy
# at level 1 on imagery, and smaller (benchmarks/encode_bench.py).
PNG_STRATEGY = 3
PNG_FILTER = 16


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


def encode_png(rgb: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG bytes (deterministic for a given imagecodecs build)."""
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb), level=level, strategy=PNG_STRATEGY, filter=PNG_FILTER))


def encode_tile(layer: str, data: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Sensor units (bands, H, W) -> PNG bytes of `layer` (what the build writes and the tests compare)."""
    return encode_png(to_rgb8(layer, data), level=level)


def encode_hwc(layer: str, hwc: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """Sensor units (H, W, bands) -> PNG bytes of `layer` (the build's layout)."""
    return encode_png(rgb8(layer, hwc), level=level)


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an (H, W, C) uint8 array."""
    return np.asarray(imagecodecs.png_decode(data))
