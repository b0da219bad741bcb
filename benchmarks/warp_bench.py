"""Metatile reprojection: `scale_alibi.curate.warp.warp` (PROJ on nodes + OpenCV remap) vs GDAL's warper.

    python benchmarks/warp_bench.py [--metatile 3] [--repeats 3]

One metatile (2^metatile x 2^metatile tiles of 256 px) is cut from an in-memory UTM source, as the
build does after its COG read, for two cases: S2 (10 m, bilinear upsampling at z15) and NAIP
(0.6 m, area-average downsampling at z17). Anchor: `rasterio.warp.reproject` (GDAL's warper, one
thread, its default approximate transformer) onto the same grid with the same resampling, in the
same run. Prints ms per metatile for both, the ratio, and the mean absolute difference of the two
outputs (the two agree up to interpolation details; the build's alignment is tested against an
analytic truth in tests/curate/test_build.py, not against GDAL).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mercantile
import numpy as np
import rasterio.warp
from affine import Affine
from pyproj import Transformer
from rasterio.enums import Resampling

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import median_ms  # noqa: E402

from scale_alibi.curate.reader import Source  # noqa: E402
from scale_alibi.curate.warp import Grid, warp  # noqa: E402

LON, LAT = -102.0, 35.2  # the synthetic world's centre (UTM 13N / 14N edge region)
UTM = "EPSG:32614"


def source_for(grid: Grid, res_m: float, seed: int) -> Source:
    """A textured 3-band uint8 UTM array covering `grid` plus a margin, at `res_m` metres."""
    to_utm = Transformer.from_crs("EPSG:3857", UTM, always_xy=True)
    left, bottom, right, top = to_utm.transform_bounds(*grid.bounds, densify_pts=21)
    pad = 8 * res_m
    left, bottom, right, top = left - pad, bottom - pad, right + pad, top + pad
    w, h = int((right - left) / res_m) + 1, int((top - bottom) / res_m) + 1
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    data = np.stack([base + rng.normal(0, 12, (h, w)) for _ in range(3)]).clip(1, 255).astype(np.uint8)
    return Source(data, Affine(res_m, 0, left, 0, -res_m, top), UTM, 0, res_m)


def gdal_warp(src: Source, grid: Grid, resampling: str) -> np.ndarray:
    out = np.zeros((src.data.shape[0],) + grid.shape, np.uint8)
    rasterio.warp.reproject(src.data, out, src_transform=src.transform, src_crs=src.crs, src_nodata=0,
                            dst_transform=grid.transform, dst_crs="EPSG:3857", dst_nodata=0,
                            resampling=Resampling[resampling], num_threads=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metatile", type=int, default=3, help="levels: 3 = 8x8 tiles (the build's default)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = 2**args.metatile
    print(f"one metatile of {n}x{n} tiles ({n * 256} px square), one thread each")
    for label, zoom, res_m, resampling in (("S2 10 m -> z15, bilinear", 15, 10.0, "bilinear"),
                                           ("NAIP 0.6 m -> z17, average", 17, 0.6, "average")):
        t = mercantile.tile(LON, LAT, zoom)
        grid = Grid(zoom, t.x - t.x % n, t.y - t.y % n, n, n)
        src = source_for(grid, res_m, seed=zoom)
        ours = median_ms(lambda: warp([src], grid, np.uint8, 0, resampling), args.repeats)
        gdal = median_ms(lambda: gdal_warp(src, grid, resampling), args.repeats)
        mine, _ = warp([src], grid, np.uint8, 0, resampling)
        diff = np.abs(np.moveaxis(mine, -1, 0).astype(float) - gdal_warp(src, grid, resampling)).mean()
        print(f"{label:28s} project {ours:8.1f} ms   GDAL warper {gdal:8.1f} ms   "
              f"speed-up {gdal / ours:5.1f}x   mean |diff| {diff:.2f} DN")


if __name__ == "__main__":
    main()
