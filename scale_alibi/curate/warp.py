"""Reproject source windows once per metatile onto the web-mercator tile grid, and mosaic them.

A metatile is a rectangular block of XYZ tiles at one zoom. Its grid is exact: pixel (0, 0) of
tile (z, x, y) has its corner at the tile's mercator corner, pixel size = tile width / 256.
Cutting tiles out of a metatile is array slicing, so all tiles share one warp.

Resampling (chosen from the ratio of output to source ground pixel size, per layer and zoom):
- output pixels larger than source pixels (downsampling, e.g. NAIP 0.6 m -> z17 0.9 m):
  ``average`` (area weighted; point sampling a fine texture aliases);
- otherwise (upsampling, e.g. 10 m Sentinel into z15-z17): ``bilinear`` (cubic overshoots at
  edges and on speckle; bilinear keeps S1 linear power non-negative).
- classes (S2 SCL): ``nearest``.
Sources are read at the coarsest COG overview still no coarser than the output (``reader``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from affine import Affine
from pyproj import CRS
from pyproj.enums import TransformDirection

from scale_alibi.contract.tiles import ORIGIN_M as ORIGIN
from scale_alibi.curate.reader import Source, transformer_from_3857

TILE = 256
NODE_STEP = 32  # output pixels between exactly transformed nodes (a power of two: see SourceMaps)
# Largest float32 map of one remapped strip: under glibc's largest mmap threshold (32 MiB), above which
# every allocation is a fresh mapping, faulted in and zeroed page by page.
MAX_STRIP_BYTES = 8 << 20
OPENCV_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64))


@dataclass(frozen=True)
class Grid:
    """A block of tiles (x0..x0+nx-1, y0..y0+ny-1) at zoom z, `size` px each, in EPSG:3857."""

    z: int
    x0: int
    y0: int
    nx: int
    ny: int
    size: int = TILE

    @property
    def res(self) -> float:
        return 2 * ORIGIN / (2**self.z * self.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ny * self.size, self.nx * self.size

    @property
    def transform(self) -> Affine:
        tile_w = 2 * ORIGIN / 2**self.z
        return Affine(self.res, 0, -ORIGIN + self.x0 * tile_w, 0, -self.res, ORIGIN - self.y0 * tile_w)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        h, w = self.shape
        t = self.transform
        return t.c, t.f + h * t.e, t.c + w * t.a, t.f

    @property
    def ground_res(self) -> float:
        """Pixel size in ground metres at the grid's centre latitude (mercator scale = 1/cos(lat))."""
        y = (self.bounds[1] + self.bounds[3]) / 2
        lat = math.atan(math.sinh(y / 6378137.0))
        return self.res * math.cos(lat)

    def tile_slice(self, x: int, y: int) -> tuple[slice, slice]:
        """Row and column slices of tile (x, y) in this grid's arrays."""
        r, c = (y - self.y0) * self.size, (x - self.x0) * self.size
        return slice(r, r + self.size), slice(c, c + self.size)


def block_grid(z: int, tiles, size: int = TILE) -> Grid:
    """The smallest grid at zoom z covering the (x, y) `tiles`."""
    xs = [t[0] for t in tiles]
    ys = [t[1] for t in tiles]
    return Grid(z, min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1, size)


def choose_resampling(src_ground_res: float, dst_ground_res: float) -> str:
    """"average" when downsampling, "bilinear" when upsampling (see module docstring)."""
    return "average" if dst_ground_res > src_ground_res * 1.001 else "bilinear"


@dataclass(frozen=True)
class SourceMaps:
    """Where the centres of an EPSG:3857 output window (transform `t`, `shape`) fall in a source array
    (col, row; pixel i's centre is i), fitted once per window and cut into maps strip by strip.

    The exact transform (PROJ) is evaluated on nodes every `step` output pixels and interpolated
    linearly in between (like GDAL's approximate transformer; over one node cell the mapping is
    affine to < 1e-3 px at the zooms this project builds). Only what an affine fit of the nodes
    leaves is interpolated (small numbers: float32 and cv2's fixed-point weights stay far below
    1e-3 px); the affine part is added exactly. The interpolation is cv2.resize of the node grid onto
    a frame one node wider on each side, so no output pixel is extrapolated; with `step` a power
    of two, the maps of rows r0:r1 are bit for bit those rows of the whole window's maps."""

    shape: tuple[int, int]
    step: int
    resid: tuple[np.ndarray, np.ndarray]  # float32 residuals at the nodes, (rows + 2, cols + 2), for col and row
    coef: tuple[np.ndarray, np.ndarray]  # the affine fits: value = c0 + c1 * row + c2 * col

    @classmethod
    def fit(cls, t: Affine, shape: tuple[int, int], src_crs, src_transform: Affine, step: int = NODE_STEP) -> SourceMaps:
        h, w = shape
        assert h % step == 0 and w % step == 0
        nr, nc = h // step + 2, w // step + 2
        # Node k sits where cv2.resize puts source sample k: output index (k + 0.5) * step - 0.5,
        # in a frame shifted by one node (step pixels) up and left.
        rpos = (np.arange(nr) + 0.5) * step - 0.5 - step
        cpos = (np.arange(nc) + 0.5) * step - 0.5 - step
        X, Y = np.meshgrid(t.c + (cpos + 0.5) * t.a, t.f + (rpos + 0.5) * t.e)
        sx, sy = transformer_from_3857(CRS.from_user_input(src_crs).to_wkt()).transform(X, Y)
        inv = ~src_transform
        rr, cc = np.meshgrid(rpos, cpos, indexing="ij")
        design = np.stack([np.ones(rr.size), rr.ravel(), cc.ravel()], 1)
        resid, coefs = [], []
        for coord in (inv.a * sx + inv.b * sy + inv.c - 0.5, inv.d * sx + inv.e * sy + inv.f - 0.5):
            coef, *_ = np.linalg.lstsq(design, coord.ravel(), rcond=None)
            resid.append((coord - (design @ coef).reshape(coord.shape)).astype(np.float32))
            coefs.append(coef)
        return cls(shape, step, (resid[0], resid[1]), (coefs[0], coefs[1]))

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """The (col, row) maps of window rows r0:r1 (multiples of `step`, or r1 the last row), float32."""
        h, w = self.shape
        s = self.step
        k0, k1 = r0 // s, -(-r1 // s)
        out = []
        for resid, coef in zip(self.resid, self.coef):
            framed = cv2.resize(resid[k0:k1 + 2], (w + 2 * s, (k1 - k0) * s + 2 * s), interpolation=cv2.INTER_LINEAR)
            # The sum is a new contiguous array (cv2.remap needs one): no separate copy of the slice.
            full = framed[s:s + r1 - r0, s:s + w] + (coef[0] + coef[1] * np.arange(r0, r1)).astype(np.float32)[:, None]
            full += (coef[2] * np.arange(w)).astype(np.float32)[None, :]
            out.append(full)
        return out[0], out[1]

    def strips(self) -> list[tuple[int, int]]:
        """The window's rows as (r0, r1) strips of whole node cells, each of at most MAX_STRIP_BYTES per map."""
        h, w = self.shape
        rows = max(self.step, MAX_STRIP_BYTES // (4 * w) // self.step * self.step)
        return [(r, min(h, r + rows)) for r in range(0, h, rows)]


def source_maps(t: Affine, shape: tuple[int, int], src_crs, src_transform: Affine, step: int = NODE_STEP
                ) -> tuple[np.ndarray, np.ndarray]:
    """The (col, row) source coordinates of every centre of the output window (see SourceMaps), whole."""
    return SourceMaps.fit(t, shape, src_crs, src_transform, step).rows(0, shape[0])


def _area_prefilter(src: Source, factor: float) -> tuple[np.ndarray, np.ndarray, Affine]:
    """Area-average the source (and its validity) by `factor` (> 1) before bilinear sampling."""
    _, h, w = src.data.shape
    nh, nw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
    img = cv2.resize(np.moveaxis(src.data, 0, -1), (nw, nh), interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = img[..., None]
    mask = cv2.resize(_valid_u8(src), (nw, nh), interpolation=cv2.INTER_AREA)
    transform = src.transform @ Affine.scale(w / nw, h / nh)
    return img, mask, transform


def _valid_u8(src: Source) -> np.ndarray:
    if src.valid is not None:  # the sensor's rule (scale_alibi.curate.validity) already decided
        return _bool_u8(src.valid)
    if src.nodata is None:
        return np.full(src.data.shape[1:], 255, np.uint8)
    bad = np.all(src.data == src.nodata, axis=0) if src.data.dtype == np.uint8 else np.any(src.data == src.nodata, axis=0)
    if src.data.dtype.kind == "f":
        bad |= ~np.isfinite(src.data).all(axis=0)
    return _bool_u8(~bad)


def _bool_u8(mask: np.ndarray) -> np.ndarray:
    """255 where `mask`, else 0, in one uint8 pass (bool is stored as the bytes 0 and 1)."""
    return np.ascontiguousarray(mask).view(np.uint8) * np.uint8(255)


def warp(sources: list[Source], grid: Grid, dtype, nodata: float, resampling: str | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Reproject and mosaic `sources` (first wins) onto `grid`: (H, W, bands) data and an (H, W) valid mask.

    A pixel is valid when every source pixel its kernel touches is data (not nodata, inside the
    read window): edges are dropped rather than blended with nodata."""
    cv2.setNumThreads(1)  # one thread per Dask worker; parallelism comes from workers
    h, w = grid.shape
    out: np.ndarray | None = None
    valid = np.zeros((h, w), bool)
    for src in sources:
        bands = src.data.shape[0]
        win = _dst_window(src, grid)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        rs = resampling or choose_resampling(src.res, grid.ground_res)
        if rs == "average":
            img, mask, transform = _area_prefilter(src, grid.ground_res / src.res)
        else:
            img, mask, transform = np.moveaxis(src.data, 0, -1), _valid_u8(src), src.transform
        if img.dtype.kind == "f":
            img = np.where(np.isfinite(img) & (img != (src.nodata if src.nodata is not None else np.nan)), img, 0)
            img = img.astype(np.float32, copy=False)
            # cv2 weighs float pixels exactly but uint8 ones on a 1/32 px lattice: a uint8 mask would
            # call a float pixel valid that still takes up to 1/64 of a nodata neighbour.
            mask = mask.astype(np.float32) / 255
        img = np.ascontiguousarray(img)  # cv2.remap needs one
        interp = cv2.INTER_NEAREST if rs == "nearest" else cv2.INTER_LINEAR
        # Only the part of the grid this source can reach is remapped (a NAIP quarter-quad covers a
        # fraction of a metatile), in strips of rows: every array of a strip (maps, remapped pixels and
        # mask) stays under MAX_STRIP_BYTES, so the allocator reuses the memory of the strip before
        # instead of mapping fresh pages (which the kernel zeroes) for each; the pixels are the same.
        maps = SourceMaps.fit(grid.transform @ Affine.translation(c0, r0), (r1 - r0, c1 - c0), src.crs, transform)
        for s0, s1 in maps.strips():
            mx, my = maps.rows(s0, s1)
            data = cv2.remap(img, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            m = cv2.remap(mask, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            got = m >= 1 - 1e-5 if m.dtype.kind == "f" else m == 255
            if data.ndim == 2:
                data = data[..., None]
            if out is None:
                out = np.full((h, w, bands), nodata, dtype=data.dtype)
            region, vreg = out[r0 + s0:r0 + s1, c0:c1], valid[r0 + s0:r0 + s1, c0:c1]
            fill = got & ~vreg
            fill_where(region, data, fill)
            vreg |= fill
        if valid.all():
            break
    if out is None:
        out = np.full((h, w, 1), nodata, dtype=dtype)
    return out, valid


def fill_where(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """Copy the pixels of `src` where the (H, W) bool `mask` is set into `dst` ((H, W, bands) arrays;
    `dst` may be a view into a larger one). OpenCV's masked copy, one pass for all bands: several
    times faster than numpy's copyto with a mask broadcast over the bands, same result."""
    if dst.dtype not in OPENCV_DTYPES or src.dtype != dst.dtype:
        np.copyto(dst, src, where=mask[..., None])
        return
    if dst.shape[2] == 1:  # OpenCV takes a one-band image as 2-D
        dst2, src2 = dst[..., 0], src[..., 0]
    else:
        dst2, src2 = dst, src
    written = cv2.copyTo(src2, np.ascontiguousarray(mask).view(np.uint8), dst2)
    if not np.shares_memory(written, dst):  # OpenCV could not write into this view: copied elsewhere
        np.copyto(dst, src, where=mask[..., None])


def _dst_window(src: Source, grid: Grid, pad: int = 2) -> tuple[int, int, int, int] | None:
    """Rows r0:r1 and columns c0:c1 of `grid` (multiples of NODE_STEP) that the source array can reach."""
    _, sh, sw = src.data.shape
    t = src.transform
    xs = [t.c, t.c + sw * t.a + sh * t.b]
    ys = [t.f, t.f + sw * t.d + sh * t.e]
    left, bottom, right, top = transformer_from_3857(CRS.from_user_input(src.crs).to_wkt()).transform_bounds(
        min(xs), min(ys), max(xs), max(ys), densify_pts=21, direction=TransformDirection.INVERSE)
    g = grid.transform
    h, w = grid.shape
    c0 = max(0, int(math.floor((left - g.c) / g.a)) - pad)
    c1 = min(w, int(math.ceil((right - g.c) / g.a)) + pad)
    r0 = max(0, int(math.floor((g.f - top) / -g.e)) - pad)
    r1 = min(h, int(math.ceil((g.f - bottom) / -g.e)) + pad)
    s = NODE_STEP
    c0, r0 = c0 // s * s, r0 // s * s
    c1, r1 = min(w, -(-c1 // s) * s), min(h, -(-r1 // s) * s)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1


def box_down2(data: np.ndarray) -> np.ndarray:
    """2x2 area average of an (H, W, bands) image: the zoom-z image from its zoom-z+1 children."""
    h, w = data.shape[:2]
    img = cv2.resize(data, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return img.reshape(img.shape[:2] + (-1,))
