"""The one web-mercator tile maths module agrees with mercantile and with itself (scalar vs vector)."""

from __future__ import annotations

import math

import mercantile
import numpy as np
import pytest

from scale_alibi.contract.tiles import (
    EQUATOR_M,
    MAX_LAT,
    ORIGIN_M,
    column_west_lon,
    ground_size_at_lat_m,
    row_north_lat,
    tile_bounds,
    tile_centre_lat_deg,
    tile_ground_size_m,
)

TILES = [(0, 0, 0), (1, 1, 0), (15, 7700, 12300), (17, 35000, 51000), (22, 2**21 + 5, 2**22 - 1)]


@pytest.mark.parametrize("z, x, y", TILES)
def test_scalar_edges_equal_mercantile_bit_for_bit(z, x, y):
    b = mercantile.bounds(x, y, z)
    n = math.pow(2, z)
    assert (column_west_lon(x, n), column_west_lon(x + 1, n)) == (b.west, b.east)
    assert row_north_lat(y, n) == pytest.approx(b.north, abs=1e-12)
    assert row_north_lat(y + 1, n) == pytest.approx(b.south, abs=1e-12)


def test_vector_bounds_match_the_scalar_edges():
    z, x, y = (np.array(v) for v in zip(*TILES))
    got = tile_bounds(z, x, y)
    want = [[column_west_lon(tx, 2.0**tz), row_north_lat(ty + 1, 2.0**tz), column_west_lon(tx + 1, 2.0**tz),
             row_north_lat(ty, 2.0**tz)] for tz, tx, ty in TILES]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_constants_are_the_epsg3857_ones():
    assert ORIGIN_M == 20037508.342789244  # the literal curate's warp used before
    assert EQUATOR_M == 2 * ORIGIN_M
    assert row_north_lat(0, 1.0) == pytest.approx(MAX_LAT, abs=1e-12)


def test_ground_size_is_the_equator_scaled_by_the_cosine_of_the_tile_centre():
    z, y = 15, 12300
    lat = tile_centre_lat_deg(z, y)
    assert row_north_lat(y + 1, 2.0**z) < lat < row_north_lat(y, 2.0**z)
    assert tile_ground_size_m(z, y) == ground_size_at_lat_m(z, lat) == pytest.approx(
        EQUATOR_M * math.cos(math.radians(lat)) / 2**z)
