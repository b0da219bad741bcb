"""Validation shared by the routers: release look-up, tile coordinates and triplet rows."""

from __future__ import annotations

from scale_alibi.serve.catalog import LAYERS, MAX_PACKED_ZOOM, Catalog, ReleaseIndex
from scale_alibi.serve.errors import ApiError

JSON_METHODS = ["GET", "HEAD"]  # every JSON document answers HEAD too (headers only)


def release_or_404(catalog: Catalog, name: str) -> ReleaseIndex:
    """The finished release `name`, or a 404 saying which releases exist."""
    index = catalog.get(name)
    if index is None:
        raise ApiError(404, f"no finished release named {name!r}; see /releases")
    return index


def check_layer(layer: str) -> None:
    """404 for a layer other than s1, s2, naip."""
    if layer not in LAYERS:
        raise ApiError(404, f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")


def check_tile(z: int, x: int, y: int) -> None:
    """422 for a zoom outside 0..MAX_PACKED_ZOOM or x/y outside the zoom's 2**z grid."""
    if not 0 <= z <= MAX_PACKED_ZOOM:
        raise ApiError(422, f"zoom {z} outside 0..{MAX_PACKED_ZOOM}")
    n = 2**z
    if not (0 <= x < n and 0 <= y < n):
        raise ApiError(422, f"tile x={x}, y={y} outside the zoom-{z} grid 0..{n - 1}")


def triplet_row_or_404(catalog: Catalog, release: str, z: int, x: int, y: int) -> tuple[ReleaseIndex, int]:
    """(release index, manifest row) of triplet z/x/y: 404 for an unknown release or triplet, 422
    for coordinates off the zoom's grid."""
    index = release_or_404(catalog, release)
    check_tile(z, x, y)
    row = index.row_of(z, x, y)
    if row is None:
        raise ApiError(404, f"no triplet {z}/{x}/{y} in release {release!r}")
    return index, row
