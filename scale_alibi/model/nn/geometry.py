"""Ground geometry of web-mercator tiles and of the patch grids cut from them.

Everything here is in metres on the ground. A tile at zoom z covers 2*pi*R*cos(lat)/2^z metres
per side (R = 6378137 m, the WGS84 / web-mercator sphere radius, lat = latitude of the tile
centre); an image of that tile with W pixels has a ground sample distance of that width / W,
whatever the sensor's nominal resolution was before it was warped onto the tile.
"""

from __future__ import annotations

import math

import torch

EARTH_RADIUS_M = 6378137.0  # web-mercator (EPSG:3857) sphere radius
EQUATOR_M = 2.0 * math.pi * EARTH_RADIUS_M


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


def patch_centres_m(grid: int, patch_m: torch.Tensor) -> torch.Tensor:
    """Centres of a grid x grid patch grid in metres from the tile's top-left corner.

    patch_m: (B,) ground size of one patch (patch px * gsd). Returns (B, grid*grid, 2) holding
    (x, y) = ((col + 0.5) * patch_m, (row + 0.5) * patch_m), tokens in row-major order.
    """
    steps = torch.arange(grid, dtype=torch.float32, device=patch_m.device) + 0.5
    row, col = torch.meshgrid(steps, steps, indexing="ij")  # (grid, grid) each
    unit = torch.stack([col.reshape(-1), row.reshape(-1)], dim=-1)  # (N, 2) in patch units
    return unit.unsqueeze(0) * patch_m.to(torch.float32).reshape(-1, 1, 1)
