"""The metatile grid against mercantile, source maps against PROJ, and warps of an analytic ramp."""

from __future__ import annotations

import math

import cv2
import mercantile
import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from scale_alibi.curate import warp as warp_module
from scale_alibi.curate.reader import Source
from scale_alibi.curate.warp import (
    Grid,
    SourceMaps,
    block_grid,
    box_down2,
    choose_resampling,
    fill_where,
    source_maps,
    warp,
)

UTM = "EPSG:32615"  # Kansas is in UTM zone 15N
TO_UTM = Transformer.from_crs("EPSG:3857", UTM, always_xy=True)
Z = 16
TX, TY = mercantile.tile(-97.0, 38.0, Z).x, mercantile.tile(-97.0, 38.0, Z).y
SRC_RES = 10.0  # metres: Sentinel-like, coarser than z16's ~1.9 m ground pixels, so warps upsample


def pixel_centres_3857(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mercator x, y of output pixel centres, from mercantile's bounds of the grid's first tile."""
    b = mercantile.xy_bounds(grid.x0, grid.y0, grid.z)
    res = (b.right - b.left) / grid.size
    return b.left + (cols + 0.5) * res, b.top - (rows + 0.5) * res


def utm_frame(grid: Grid, margin_px: int) -> Affine:
    """A north-up SRC_RES UTM transform whose array starts `margin_px` pixels west and north of the grid."""
    w, s, e, n = TO_UTM.transform_bounds(*grid.bounds, densify_pts=21)
    x0 = math.floor(w / SRC_RES) * SRC_RES - margin_px * SRC_RES
    y0 = math.ceil(n / SRC_RES) * SRC_RES + margin_px * SRC_RES
    return Affine(SRC_RES, 0, x0, 0, -SRC_RES, y0)


def ramp(x: np.ndarray, y: np.ndarray, origin: Affine) -> np.ndarray:
    """A linear function of UTM metres: 0.1 per source pixel eastwards, 0.2 per source pixel southwards."""
    return 5.0 + 0.01 * (x - origin.c) + 0.02 * (origin.f - y)


def source_position(x_utm: np.ndarray, y_utm: np.ndarray, t: Affine) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of a UTM point in a north-up array (pixel i's centre at i)."""
    return (x_utm - t.c) / t.a - 0.5, (y_utm - t.f) / t.e - 0.5


def ramp_source(t: Affine, shape: tuple[int, int], nodata: float | None = None) -> Source:
    h, w = shape
    xs = t.c + (np.arange(w) + 0.5) * t.a
    ys = t.f + (np.arange(h) + 0.5) * t.e
    X, Y = np.meshgrid(xs, ys)
    return Source(ramp(X, Y, t).astype(np.float32)[None], t, UTM, nodata, SRC_RES)


# ---------------------------------------------------------------- the grid


def test_grid_bounds_are_the_union_of_mercantiles_tile_bounds():
    grid = Grid(Z, TX, TY, nx=3, ny=2)
    nw, se = mercantile.xy_bounds(TX, TY, Z), mercantile.xy_bounds(TX + 2, TY + 1, Z)
    assert grid.bounds == pytest.approx((nw.left, se.bottom, se.right, nw.top), abs=1e-6)
    assert grid.shape == (512, 768)
    assert grid.res == pytest.approx((nw.right - nw.left) / 256, rel=1e-12)


def test_each_tiles_slice_spans_exactly_that_tiles_mercator_box():
    grid = Grid(Z, TX, TY, nx=3, ny=2)
    for x, y in [(TX, TY), (TX + 2, TY), (TX + 1, TY + 1)]:
        rows, cols = grid.tile_slice(x, y)
        assert (rows.stop - rows.start, cols.stop - cols.start) == (256, 256)
        b = mercantile.xy_bounds(x, y, Z)
        assert grid.transform @ (cols.start, rows.start) == pytest.approx((b.left, b.top), abs=1e-6)
        assert grid.transform @ (cols.stop, rows.stop) == pytest.approx((b.right, b.bottom), abs=1e-6)


def test_ground_resolution_is_the_mercator_pixel_scaled_by_the_cosine_of_the_centre_latitude():
    grid = Grid(Z, TX, TY, nx=2, ny=2)
    centre = mercantile.ul(TX + 1, TY + 1, Z)  # the shared corner of the 2x2 block is its centre
    tile_m = mercantile.xy_bounds(TX, TY, Z)
    expected = (tile_m.right - tile_m.left) / 256 * math.cos(math.radians(centre.lat))
    assert grid.ground_res == pytest.approx(expected, rel=1e-9)


def test_block_grid_is_the_smallest_grid_covering_the_tiles():
    assert block_grid(12, [(5, 7), (8, 6), (6, 9)]) == Grid(12, 5, 6, 4, 4)
    assert block_grid(12, [(5, 7)], size=512) == Grid(12, 5, 7, 1, 1, 512)


# ---------------------------------------------------------------- resampling choice and 2x2 average


def test_resampling_averages_only_when_output_pixels_are_more_than_a_tenth_of_a_percent_larger():
    assert choose_resampling(0.6, 0.9) == "average"  # NAIP into z17
    assert choose_resampling(10.0, 10.02) == "average"
    assert choose_resampling(10.0, 10.009) == "bilinear"  # within 0.1 %: equal sizes
    assert choose_resampling(10.0, 10.0) == "bilinear"
    assert choose_resampling(10.0, 1.9) == "bilinear"  # Sentinel into z16


def test_box_down2_averages_each_2x2_block():
    data = np.array([[0, 2, 10, 20],
                     [4, 6, 30, 40],
                     [1, 1, 7, 7],
                     [1, 1, 7, 7]], np.float32)[..., None]
    out = box_down2(data)
    assert out.shape == (2, 2, 1)
    np.testing.assert_array_equal(out[..., 0], [[3, 25], [1, 7]])


def test_box_down2_keeps_bands_apart():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = [[0, 8], [16, 24]], 100, [[200, 200], [0, 0]]
    np.testing.assert_array_equal(box_down2(rgb), [[[12, 100, 100]]])


# ---------------------------------------------------------------- source maps and warps


@pytest.mark.parametrize("z", [14, 17])
def test_source_maps_match_proj_at_sample_pixels_to_a_thousandth_of_a_pixel(z):
    tile = mercantile.tile(-97.0, 38.0, z)
    grid = Grid(z, tile.x, tile.y, 2, 2)
    src_t = utm_frame(grid, margin_px=5)
    mx, my = source_maps(grid.transform, grid.shape, UTM, src_t)
    assert mx.shape == my.shape == grid.shape
    rng = np.random.default_rng(7)
    rows = np.concatenate([[0, 0, 511, 511, 255], rng.integers(0, 512, 200)])
    cols = np.concatenate([[0, 511, 0, 511, 256], rng.integers(0, 512, 200)])
    col, row = source_position(*TO_UTM.transform(*pixel_centres_3857(grid, rows, cols)), src_t)
    assert np.abs(mx[rows, cols] - col).max() < 1e-3
    assert np.abs(my[rows, cols] - row).max() < 1e-3


# cv2's bilinear remap places samples on a 1/32 pixel lattice: the ramp (0.1 + 0.2 per source
# pixel) can be off by up to 0.3 / 64 from that rounding alone.
RAMP_TOL = 0.3 / 64 + 1e-4


def test_bilinear_warp_of_a_linear_ramp_reproduces_it_at_output_pixel_centres():
    grid = Grid(Z, TX, TY, 2, 2)
    src_t = utm_frame(grid, margin_px=10)
    cols_needed = int(np.ceil((TO_UTM.transform_bounds(*grid.bounds)[2] - src_t.c) / SRC_RES)) + 10
    rows_needed = int(np.ceil((src_t.f - TO_UTM.transform_bounds(*grid.bounds)[1]) / SRC_RES)) + 10
    src = ramp_source(src_t, (rows_needed, cols_needed))
    data, valid = warp([src], grid, np.float32, nodata=-1.0)
    assert data.shape == (512, 512, 1) and data.dtype == np.float32
    assert valid.all()
    rows, cols = np.mgrid[0:512, 0:512]
    expected = ramp(*TO_UTM.transform(*pixel_centres_3857(grid, rows, cols)), src_t)
    assert np.abs(data[..., 0] - expected).max() < RAMP_TOL


def test_nodata_and_the_end_of_the_read_window_are_dropped_not_blended():
    grid = Grid(Z, TX, TY, 2, 2)
    src_t = utm_frame(grid, margin_px=3)
    grid_cols = (TO_UTM.transform_bounds(*grid.bounds)[2] - src_t.c) / SRC_RES
    # The array stops two thirds of the way across the grid; its first third of columns is nodata.
    width = int(grid_cols * 2 / 3)
    first_data_col = int(grid_cols / 3)
    rows_needed = int(np.ceil((src_t.f - TO_UTM.transform_bounds(*grid.bounds)[1]) / SRC_RES)) + 5
    src = ramp_source(src_t, (rows_needed, width), nodata=-9999.0)
    src.data[0, :, :first_data_col] = -9999.0
    data, valid = warp([src], grid, np.float32, nodata=-1.0)

    rows, cols = np.mgrid[0:512, 0:512]
    x, y = TO_UTM.transform(*pixel_centres_3857(grid, rows, cols))
    col, _ = source_position(x, y, src_t)
    # A bilinear kernel at column c reads columns floor(c) and floor(c) + 1; keep 0.1 px clear of
    # each edge, where cv2's 1/32 px lattice decides.
    clean = (col > first_data_col + 0.1) & (col < width - 1 - 0.1)
    touches_bad = (col < first_data_col - 0.1) | (col > width - 1 + 0.1)
    assert clean.sum() > 10_000 and touches_bad.sum() > 10_000  # both sides are really in the grid
    assert valid[clean].all()
    assert not valid[touches_bad].any()
    assert (data[..., 0][~valid] == -1.0).all()
    assert np.abs(data[..., 0][valid] - ramp(x, y, src_t)[valid]).max() < RAMP_TOL


def test_the_first_source_wins_and_the_second_fills_only_its_gaps():
    grid = Grid(Z, TX, TY, 2, 2)
    src_t = utm_frame(grid, margin_px=10)
    rows_needed = int(np.ceil((src_t.f - TO_UTM.transform_bounds(*grid.bounds)[1]) / SRC_RES)) + 10
    cols_needed = int(np.ceil((TO_UTM.transform_bounds(*grid.bounds)[2] - src_t.c) / SRC_RES)) + 10
    first = ramp_source(src_t, (rows_needed, cols_needed), nodata=-9999.0)
    first.data[0, :, : cols_needed // 2] = -9999.0  # the western half is missing
    second = Source(np.full((1, rows_needed, cols_needed), 1000.0, np.float32), src_t, UTM, -9999.0, SRC_RES)
    data, valid = warp([first, second], grid, np.float32, nodata=-1.0)

    rows, cols = np.mgrid[0:512, 0:512]
    x, y = TO_UTM.transform(*pixel_centres_3857(grid, rows, cols))
    col, _ = source_position(x, y, src_t)
    assert valid.all()
    east, west = col > cols_needed // 2 + 0.1, col < cols_needed // 2 - 1.1
    assert np.abs(data[..., 0][east] - ramp(x, y, src_t)[east]).max() < RAMP_TOL
    assert (data[..., 0][west] == 1000.0).all()


def whole_window_maps(maps: SourceMaps) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: the maps of the whole window from one resize of its whole node grid (how they were
    computed before strips), from the same fitted nodes."""
    h, w = maps.shape
    s = maps.step
    out = []
    for resid, coef in zip(maps.resid, maps.coef):
        framed = cv2.resize(resid, (w + 2 * s, h + 2 * s), interpolation=cv2.INTER_LINEAR)
        full = framed[s:s + h, s:s + w] + (coef[0] + coef[1] * np.arange(h)).astype(np.float32)[:, None]
        out.append(full + (coef[2] * np.arange(w)).astype(np.float32)[None, :])
    return out[0], out[1]


def test_the_maps_of_a_strip_are_bit_for_bit_those_rows_of_the_whole_windows_maps():
    grid = Grid(17, *mercantile.tile(-97.0, 38.0, 17)[:2], 4, 4)
    maps = SourceMaps.fit(grid.transform, grid.shape, UTM, utm_frame(grid, margin_px=5))
    whole_x, whole_y = whole_window_maps(maps)
    for r0, r1 in ((0, 32), (64, 320), (992, 1024), (0, 1024)):
        mx, my = maps.rows(r0, r1)
        assert mx.shape == my.shape == (r1 - r0, 1024)
        np.testing.assert_array_equal(mx, whole_x[r0:r1])
        np.testing.assert_array_equal(my, whole_y[r0:r1])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_a_warp_in_strips_writes_the_pixels_and_mask_of_a_warp_in_one_piece(monkeypatch, dtype):
    """Strips bound the size of each remapped array; the result is the same, bit for bit, as
    remapping the whole window at once (one strip), data and valid mask."""
    grid = Grid(Z, TX, TY, 4, 4)
    src_t = utm_frame(grid, margin_px=10)
    rows_needed = int(np.ceil((src_t.f - TO_UTM.transform_bounds(*grid.bounds)[1]) / SRC_RES)) + 10
    cols_needed = int(np.ceil((TO_UTM.transform_bounds(*grid.bounds)[2] - src_t.c) / SRC_RES)) + 10
    src = ramp_source(src_t, (rows_needed, cols_needed), nodata=-9999.0)
    src.data[0, : rows_needed // 3, : cols_needed // 2] = -9999.0  # a corner of nodata: the mask matters
    if dtype == np.uint8:
        src = Source(np.clip(src.data * 10, 0, 255).astype(np.uint8), src_t, UTM, 0, SRC_RES)
    results = {}
    for name, max_bytes in (("one piece", 1 << 40), ("strips", 64 * 1024 * 4)):
        monkeypatch.setattr(warp_module, "MAX_STRIP_BYTES", max_bytes)
        results[name] = warp([src], grid, dtype, nodata=0)
    assert len(SourceMaps((1024, 1024), 32, (np.zeros(0),) * 2, (np.zeros(3),) * 2).strips()) == 16  # 64 rows each
    (one, one_valid), (strips, strips_valid) = results["one piece"], results["strips"]
    assert 0.2 < one_valid.mean() < 0.99
    np.testing.assert_array_equal(strips_valid, one_valid)
    np.testing.assert_array_equal(strips, one)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.int64, bool])
@pytest.mark.parametrize("bands", [1, 2, 3, 5])
def test_fill_where_writes_what_numpys_masked_copy_writes_into_a_view(dtype, bands):
    """The masked copy of the mosaic (OpenCV's copyTo where it can) against numpy's copyto, into a
    window of a larger array, as warp fills a source's reach."""
    rng = np.random.default_rng(bands)
    big = rng.integers(0, 2 if dtype is bool else 200, (40, 50, bands)).astype(dtype)
    src = rng.integers(0, 2 if dtype is bool else 200, (24, 30, bands)).astype(dtype)
    mask = rng.random((24, 30)) > 0.4
    expected = big.copy()
    np.copyto(expected[8:32, 11:41], src, where=mask[..., None])
    fill_where(big[8:32, 11:41], src, mask)
    assert np.array_equal(big, expected)
