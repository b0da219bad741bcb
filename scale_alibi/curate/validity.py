"""Which source pixels are data: one rule per sensor, from the pixels and the metadata, in one place.

A file's nodata tag is not enough on Planetary Computer (see docs/curation.md, "Valid pixels"):
- nodata comes from the file's tag, else from the item's (or the collection's) ``raster:bands``;
- Sentinel-1 RTC: 0-filled borders lie inside the -32768 tag's area, so a pixel whose linear
  gamma0 is <= 0 in either polarisation is invalid (backscatter power is positive);
- Sentinel-2 ``visual``: some COGs carry no nodata tag and their swath edges are black, so a pixel
  that is 0 in all three bands is invalid (the TCI maps reflectance to 1-255; 0 is its fill);
- Sentinel-2 SCL: classes 0 (no data) and 1 (saturated or defective) are invalid, with the
  cloud classes 3 (shadow), 8, 9 (cloud) and 10 (cirrus);
- NAIP: a pixel that is 0 in all bands read (R, G, B) is invalid (the collar outside a quarter quad's data).
A non-finite float is never data. The masks drive the mosaic (an invalid pixel is filled from the
next scene) and ``--min-valid`` (a tile with too few valid pixels takes the next scene group, or
is dropped); the chosen fraction is the manifest's ``<layer>_valid``.
"""

from __future__ import annotations

import math

import numpy as np

# S2 scene classes that are not usable ground: no data, saturated/defective, cloud shadow,
# cloud medium / high probability, thin cirrus.
SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)


def resolve_nodata(file_nodata: float | None, metadata_nodata: float | None) -> float | None:
    """The nodata value of an asset: the file's tag, else what its STAC metadata declares."""
    return file_nodata if file_nodata is not None else metadata_nodata


def _tagged(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where the nodata tag marks a pixel: all bands for 8-bit images (an RGB pixel may
    be 0 in one band), any band for measurements (one missing polarisation spoils the pixel)."""
    h, w = data.shape[1:]
    if nodata is None:
        return np.zeros((h, w), bool)
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(data).any(axis=0)
    if data.dtype == np.uint8:
        return np.all(data == nodata, axis=0)
    return np.any(data == nodata, axis=0)


def valid_pixels(layer: str, data: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) bool: the pixels of a (bands, h, w) source read of `layer` that are data.

    `layer`: "s1" (VV and VH linear gamma0, stacked), "s2" (the `visual` RGB) or "naip" (RGB[N])."""
    bad = _tagged(data, nodata)
    if data.dtype.kind == "f":
        bad |= ~np.isfinite(data).all(axis=0)
    if layer == "s1":
        with np.errstate(invalid="ignore"):
            bad |= (data <= 0).any(axis=0)
    elif layer in ("s2", "naip"):
        bad |= (data == 0).all(axis=0)
    else:
        raise ValueError(f"no validity rule for layer {layer!r}")
    return ~bad


_SCL_USABLE = np.ones(256, bool)
_SCL_USABLE[list(SCL_INVALID)] = False


def scl_usable(scl: np.ndarray) -> np.ndarray:
    """True where an S2 scene classification is usable ground (not in SCL_INVALID)."""
    if scl.dtype == np.uint8:  # a table look-up: np.isin would build an int64 copy of the scene first
        return _SCL_USABLE[scl]
    return ~np.isin(scl, SCL_INVALID)
