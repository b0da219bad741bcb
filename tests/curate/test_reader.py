"""scale_alibi.curate.reader against a real odd-sized COG over HTTP range requests: every overview level is
georeferenced by the overview's own transform (GDAL sizes an overview ceil(W/f) x ceil(H/f))."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from scale_alibi.curate.reader import read_window
from scale_alibi.devworld.fileserver import FileServer
from scale_alibi.devworld.raster import write_cog

WIDTH, HEIGHT = 2449, 3777  # neither a multiple of 2, 4 or 8
RES = 0.6
CRS_UTM = CRS.from_epsg(26914)
ORIGIN = Affine(RES, 0.0, 226000.2, 0.0, -RES, 3901400.4)


def _cog_driver_overviews(path, data: np.ndarray) -> None:
    """The COG driver's own overviews, which round W/f, H/f down (2449 -> 1224 at f=2)."""
    profile = dict(driver="GTiff", count=len(data), height=HEIGHT, width=WIDTH, dtype="float32", crs=CRS_UTM, transform=ORIGIN)
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data)
        with mem.open() as src:
            rasterio.shutil.copy(src, str(path), driver="COG", BLOCKSIZE=512, OVERVIEW_RESAMPLING="AVERAGE")


@pytest.fixture(scope="module", params=["rounded-up", "cog-driver"])
def odd_cog(request, tmp_path_factory):
    """A float32 COG whose two bands are its own source-pixel coordinates (column, row of each pixel
    centre), served over HTTP to signed URLs only; yields (url, signer, full-resolution array).
    Overviews sized like gdaladdo's and Planetary Computer's (rounded up, the world's writer) or by
    the COG driver (rounded down)."""
    root = tmp_path_factory.mktemp("odd-cog")
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    data = np.stack([cols, rows]).astype(np.float32)
    if request.param == "rounded-up":
        write_cog(root / "odd.tif", data, CRS_UTM, ORIGIN, nodata=None)
    else:
        _cog_driver_overviews(root / "odd.tif", data)
    server = FileServer(root)
    server.require_signature(True)  # the overview is opened again from the same signed URL
    try:
        yield f"{server.url}/odd.tif", server.sign_url, data.astype(np.float64)
    finally:
        server.close()


def _area_weights(edges: np.ndarray, n: int) -> np.ndarray:
    """(len(edges) - 1, n): row i holds the overlap of source pixels [k, k+1) with the interval
    [edges[i], edges[i + 1]), normalised (area-average weights along one axis)."""
    k = np.arange(n)
    lo, hi = edges[:-1, None], edges[1:, None]
    w = np.clip(np.minimum(k + 1, hi) - np.maximum(k, lo), 0, None)
    return w / w.sum(1, keepdims=True)


def _far_corner_error(url: str, signer, full: np.ndarray, f: int) -> tuple[float, float, tuple[float, float]]:
    """Read the south-east corner of the COG at decimation f through read_window; returns the worst
    error (source pixels) of the pixels read against the full-res area average of the ground their
    georeferencing claims, the pixel size read (source pixels) and the read's south-east corner
    (source pixel coordinates)."""
    east, south = ORIGIN @ (WIDTH, HEIGHT)
    span = 30 * f * RES  # ~30 pixels of the level on a side
    xs, ys = warp_transform(CRS_UTM, "EPSG:3857", [east - span, east], [south, south + span])
    bounds_3857 = (min(xs), min(ys), max(xs), max(ys))
    k = (bounds_3857[2] - bounds_3857[0]) / span  # mercator metres per file metre here
    # Between this level's pixel size and the next one's: the reader must pick decimation f.
    src = read_window(url, signer, bounds_3857, 1.4 * f * RES * k)
    assert src is not None
    # North-up: each pixel's claimed footprint is the product of a column and a row interval.
    _, h, w = src.data.shape
    to_source = ~ORIGIN @ src.transform
    col_edges = np.array([(to_source @ (j, 0))[0] for j in range(w + 1)])
    row_edges = np.array([(to_source @ (0, i))[1] for i in range(h + 1)])
    expect = _area_weights(row_edges, HEIGHT) @ full @ _area_weights(col_edges, WIDTH).T
    # Each band grows by 1 per source pixel along its axis, so its difference from the area
    # average over the claimed footprint is the position error in source pixels.
    worst = float(np.abs(src.data - expect).max())
    return worst, src.res / RES, to_source @ (w, h)


def test_every_overview_level_is_georeferenced_by_its_own_size(odd_cog):
    """At the far (south-east) corner, where rounding the overview size up moves an overview pixel
    furthest from f source pixels per pixel, each level read agrees with the full-resolution area
    average of the ground it claims to within 0.05 source pixels."""
    url, signer, full = odd_cog
    with rasterio.open(signer(url)) as ds:
        assert ds.overviews(1) == [2, 4, 8]
    results = {f: _far_corner_error(url, signer, full, f) for f in (1, 2, 4, 8)}
    for f, (worst, px, _) in results.items():
        print(f"\ndecimation {f}: pixel {px:.5f} source px, worst error at the far corner {worst:.4f} source px")
    for f, (worst, px, corner) in results.items():
        assert worst < 0.05, f"decimation {f}: {worst:.3f} source px off at the far corner"
        assert px == pytest.approx(f, rel=0.01)
        assert corner == pytest.approx((WIDTH, HEIGHT), abs=1e-6)  # the read reached the far corner


def test_a_403_inside_a_url_is_not_read_as_an_http_403(tmp_path):
    """Only a status in GDAL's own words counts: digits in the URL's path are not a status."""
    from scale_alibi.curate.reader import _classify

    server = FileServer(tmp_path)
    try:
        missing = f"{server.url}/naip/403/m_3510101_ne_14_060.tif"  # answers 404
        refused = RuntimeError(f"'/vsicurl/{missing}' not recognized as being in a supported file format")
        assert _classify(refused, missing, 5.0) == "fatal"
        expired = RuntimeError(f"HTTP response code: 403 for '/vsicurl/{missing}'")
        assert _classify(expired, missing, 5.0) == "auth"
    finally:
        server.close()
