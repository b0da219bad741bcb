"""Render the ground truth into a sensor's native raster grid (any CRS), and write COGs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from scale_alibi.devworld import field
from scale_alibi.devworld.field import Truth
from scale_alibi.devworld.scenes import pixel_to_xy

# Block edge (pixels) within which the pixel -> local-metre map is treated as affine (error
# under 1 mm for NAIP, ~2 cm for 10 m sensors), and the sub-grid step of the smooth fields.
BLOCK = {"naip": 256, "s2": 64, "s1": 64}
STEP = {"naip": 4, "s2": 1, "s1": 1}
GSD = {"naip": 0.6, "s2": 10.0, "s1": 10.0}


def _interp_matrix(n: int, step: int) -> tuple[np.ndarray, int]:
    """Bilinear interpolation matrix from a sub-grid (every `step` pixels) to n pixels."""
    m = (n - 1 + step - 1) // step + 1
    W = np.zeros((n, m), np.float32)
    t = np.arange(n) / step
    i0 = np.floor(t).astype(int)
    f = t - i0
    W[np.arange(n), i0] = 1 - f
    nz = f > 0
    W[np.arange(n)[nz], i0[nz] + 1] = f[nz]
    return W, m


def _upsample(v: np.ndarray, Wr: np.ndarray, WcT: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of (..., mr, mc) sub-grid fields to (..., h, w) via two plain GEMMs."""
    lead = v.shape[:-2]
    v = np.ascontiguousarray(v, np.float32).reshape(-1, *v.shape[-2:])
    t = np.ascontiguousarray(np.swapaxes(v, 1, 2)).reshape(-1, v.shape[1]) @ Wr.T  # (B*mc, h)
    t = np.ascontiguousarray(np.swapaxes(t.reshape(v.shape[0], v.shape[2], -1), 1, 2))  # (B, h, mc)
    out = t.reshape(-1, v.shape[2]) @ WcT  # (B*h, w)
    return out.reshape(*lead, Wr.shape[0], WcT.shape[1])


def render_sensor(truth: Truth, sensor: str, crs: CRS, transform: Affine, height: int, width: int) -> np.ndarray:
    """Clear-sky, noise-free sensor values (bands, H, W) float32: each pixel the area average of
    the band-limited truth over that pixel's footprint."""
    with single_threaded_blas():
        return _render(truth, sensor, crs, transform, height, width)


def single_threaded_blas():
    """Limit BLAS to one thread: the small GEMMs here run 10x slower when threads contend."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional speed-up
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _render(truth: Truth, sensor: str, crs: CRS, transform: Affine, height: int, width: int) -> np.ndarray:
    gsd = GSD[sensor]
    nb = {"naip": 4, "s2": 3, "s1": 2}[sensor]
    out = np.empty((nb, height, width), np.float32)
    bs, step = BLOCK[sensor], STEP[sensor]
    blocks = [(r, c, min(bs, height - r), min(bs, width - c)) for r in range(0, height, bs) for c in range(0, width, bs)]
    # Five points per block: centre, +/- half a block along columns and rows (pixel coordinates).
    cols, rows = [], []
    for r0, c0, h, w in blocks:
        r_mid, c_mid = r0 + h / 2, c0 + w / 2
        cols += [c_mid, c_mid + w / 2, c_mid - w / 2, c_mid, c_mid]
        rows += [r_mid, r_mid, r_mid, r_mid + h / 2, r_mid - h / 2]
    xs, ys = pixel_to_xy(transform, cols, rows)
    lon, lat = warp_transform(crs, "EPSG:4326", list(xs), list(ys))
    lx, ly = truth.to_local(np.array(lon), np.array(lat))
    pts = np.stack([lx, ly], axis=1).reshape(len(blocks), 5, 2)
    sets = truth.wave_sets()
    for (r0, c0, h, w), p in zip(blocks, pts):
        a = (p[1] - p[2]) / w  # local metres per column
        b = (p[3] - p[4]) / h  # local metres per row
        pc = p[0]
        rr = np.arange(h) + 0.5 - h / 2
        cc = np.arange(w) + 0.5 - w / 2
        P = pc + rr[:, None] * b
        Q = cc[:, None] * a
        gains = {n: (s.taper(gsd) * s.box(a[0], a[1], b[0], b[1]), None) for n, s in sets.items()}
        tex = truth.textures(P, Q, gains)
        if step == 1:
            wts, blend = truth.weights_grid(P, Q), truth.stripe_blend_grid(P, Q)
            smooth = None
        else:
            Wr, mr = _interp_matrix(h, step)
            Wc, mc = _interp_matrix(w, step)
            ri = np.arange(mr) * step
            ci = np.arange(mc) * step
            Ps = pc + (ri + 0.5 - h / 2)[:, None] * b
            Qs = (ci + 0.5 - w / 2)[:, None] * a
            wts, blend = truth.weights_grid(Ps, Qs), truth.stripe_blend_grid(Ps, Qs)
            smooth = (Wr, np.ascontiguousarray(Wc.T))
        if smooth is not None:
            wts = _upsample(wts, *smooth)
            blend = _upsample(blend, *smooth)
        wts = wts.astype(np.float32)
        blend = blend.astype(np.float32)
        if sensor == "s1":
            out[:, r0 : r0 + h, c0 : c0 + w] = field.s1_gamma0(wts, blend, tex)
        else:
            opt = field.optical(wts, blend, tex)
            out[:, r0 : r0 + h, c0 : c0 + w] = field.s2_visual(opt) if sensor == "s2" else field.naip_dn(opt)
    return out


COG_BLOCK = 512


def overview_factors(width: int, height: int, minimum: int = 0) -> list[int]:
    """Decimations 2, 4, 8, ... until a level fits in one block (GDAL's COG rule), at least `minimum` of them."""
    out: list[int] = []
    while len(out) < minimum or math.ceil(max(width, height) / (out[-1] if out else 1)) > COG_BLOCK:
        out.append(2 * (out[-1] if out else 1))
    return out


def write_cog(path: Path, data: np.ndarray, crs: CRS, transform: Affine, nodata, resampling: str = "average",
              min_overviews: int = 0) -> None:
    """Write (bands, H, W) as a real COG: 512 px tiles, DEFLATE, internal overviews sized like
    gdaladdo's and Planetary Computer's (ceil(W/f) x ceil(H/f), so an overview pixel of an image
    whose size is not a multiple of f is not f source pixels), at least `min_overviews` of them."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", count=count, height=height, width=width, dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data)
            ds.build_overviews(overview_factors(width, height, min_overviews), Resampling[resampling])
        with mem.open() as src:
            rasterio.shutil.copy(
                src,
                str(path),
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=COG_BLOCK,
                OVERVIEWS="FORCE_USE_EXISTING",
                LEVEL=1,  # fast; the predictor does most of the size work
                PREDICTOR="YES",
                NUM_THREADS="ALL_CPUS",
                BIGTIFF="IF_SAFER",
            )
