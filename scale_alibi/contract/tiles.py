"""Web-mercator (EPSG:3857) XYZ tile maths, written once: edges in degrees, ground size in metres.

Tile (z, x, y): 2**z columns from longitude -180, 2**z rows from the north edge (row 0). The ground
width of a tile at zoom z is 2*pi*R*cos(lat)/2^z metres (R = 6378137 m, the WGS84 / web-mercator
sphere radius, lat = latitude of the tile centre); an image of that tile with W pixels has a ground
sample distance of that width / W, whatever the sensor's resolution was before it was warped.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6378137.0  # web-mercator (EPSG:3857) sphere radius
EQUATOR_M = 2.0 * math.pi * EARTH_RADIUS_M
ORIGIN_M = math.pi * EARTH_RADIUS_M  # half the web-mercator world width (20037508.342789244 m)
MAX_LAT = 85.0511287798066  # web-mercator's latitude limit (mercantile's tile (0, 0, 0) top)


def column_west_lon(x: int, n: float) -> float:
    """Longitude in degrees of the west edge of tile column x, with n = 2**zoom columns."""
    # Same float formula as mercantile.bounds, so edges agree bit for bit with its tile boxes.
    return x / n * 360.0 - 180.0


def row_north_lat(y: int, n: float) -> float:
    """Latitude in degrees of the north edge of tile row y, with n = 2**zoom rows."""
    return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))


def tile_bounds(z: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Web-mercator tiles' (west, south, east, north) in degrees, one row per tile."""
    n = np.exp2(z.astype(np.float64))
    west = x / n * 360.0 - 180.0
    east = (x + 1) / n * 360.0 - 180.0
    north = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * y / n))))
    south = np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * (y + 1) / n))))
    return np.stack([west, south, east, north], axis=1)


def tile_centre_lat_deg(z: int, y: int) -> float:
    """Latitude in degrees of the centre of XYZ tile row y at zoom z (row 0 = north)."""
    n = math.pi * (1.0 - 2.0 * (y + 0.5) / (1 << z))
    return math.degrees(math.atan(math.sinh(n)))


def tile_ground_size_m(z: int, y: int) -> float:
    """Ground width in metres of XYZ tile (z, *, y): 2*pi*R*cos(lat of tile centre) / 2^z."""
    return EQUATOR_M * math.cos(math.radians(tile_centre_lat_deg(z, y))) / (1 << z)


def ground_size_at_lat_m(z: int, lat_deg: float) -> float:
    """Ground width in metres of a zoom-z tile whose centre lies at latitude lat_deg."""
    return EQUATOR_M * math.cos(math.radians(lat_deg)) / (1 << z)
