"""Land-cover labels of XYZ tiles from the world's truth: the class that covers most of a tile,
counted on a 32 x 32 grid of ground points over the tile (rows evenly spaced in web-mercator y, as
the tile's pixels are). The world-landcover evaluation task labels its tiles with these.
"""

from __future__ import annotations

import mercantile
import numpy as np

from scale_alibi.devworld.field import CLASSES, Truth

LABEL_GRID = 32  # ground points per tile side for the dominant class


def class_fractions(truth: Truth, z: int, x: int, y: int) -> np.ndarray:
    """Fraction of XYZ tile (z, x, y) each land-cover class covers, (len(CLASSES),)."""
    b = mercantile.bounds(x, y, z)
    t = (np.arange(LABEL_GRID) + 0.5) / LABEL_GRID
    lon = b.west + t * (b.east - b.west)
    # rows evenly spaced in web-mercator y, as the tile's pixels are
    top, bottom = mercantile.xy(b.west, b.north)[1], mercantile.xy(b.west, b.south)[1]
    lat = np.array([mercantile.lnglat(0.0, top + v * (bottom - top)).lat for v in t])
    lon_g, lat_g = np.meshgrid(lon, lat)
    counts = np.bincount(truth.classes(*truth.to_local(lon_g, lat_g)).ravel(), minlength=len(CLASSES))
    return counts / counts.sum()


def tile_label(truth: Truth, z: int, x: int, y: int) -> int:
    """The class covering most of XYZ tile (z, x, y)."""
    return int(class_fractions(truth, z, x, y).argmax())
