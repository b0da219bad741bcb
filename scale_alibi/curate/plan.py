"""Which web-mercator tiles a region covers: exact, streamed tile enumeration (the `curate plan` maths).

A tile belongs to a region when the tile's interior and the region's interior overlap (positive
area in common). Tiles that only touch the region along an edge or at a corner do not count, so
two regions that share a tile boundary never share a tile, and a polygon equal to one tile plans
exactly that tile.

How it stays exact and fast: a tile row is a latitude band. Clipping the region to the band
gives pieces; each piece with positive area is connected, so its interior projects onto an open
longitude interval, and a tile of that row overlaps the piece's interior exactly when its own
longitude interval overlaps that one. So every row is a few integer x-ranges, computed from one
clip per row, with no per-tile geometry test. Counting sums the ranges without listing tiles;
`iter_tiles` streams them row by row (memory is one row's ranges).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat

import mercantile
import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.tiles import MAX_LAT
from scale_alibi.contract.tiles import column_west_lon as _lon
from scale_alibi.contract.tiles import row_north_lat as _lat
from scale_alibi.regions import ReleaseSpec, SubRegion, check_geometry

MAX_ZOOM = 22
# Tiles a plan may hold unless asked for more (--max-tiles): CONUS at zoom 15 is 9.1 million, and
# a build holds every planned tile in memory (a dict entry each), so an area or zoom beyond this is
# refused before anything runs rather than filling the machine's memory with no output.
MAX_TILES = 20_000_000
# Rows are clipped in chunks first so that each row's clip works on a small piece of a big outline.
_CHUNK_ROWS = 64


def check_zoom(zoom: int) -> int:
    """Return `zoom` if it is a web-mercator zoom this project plans (0-22), else raise UserError."""
    if isinstance(zoom, bool) or not isinstance(zoom, int) or not 0 <= zoom <= MAX_ZOOM:
        raise UserError(f"zoom {zoom!r} is outside 0-{MAX_ZOOM}; pass an integer zoom in that range")
    return zoom


def _x_range(west: float, east: float, n: float, last: int) -> tuple[int, int]:
    """Columns x with lon(x) < east and lon(x + 1) > west (open-interval overlap)."""
    lo = min(max(int(math.floor((west + 180.0) / 360.0 * n)), 0), last)
    while lo < last and _lon(lo + 1, n) <= west:
        lo += 1
    while lo > 0 and _lon(lo, n) > west:
        lo -= 1
    hi = min(max(int(math.ceil((east + 180.0) / 360.0 * n)) - 1, 0), last)
    while hi > 0 and _lon(hi, n) >= east:
        hi -= 1
    while hi < last and _lon(hi + 1, n) < east:
        hi += 1
    return lo, hi


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _polygons(geometry: BaseGeometry) -> Iterator[BaseGeometry]:
    if geometry.geom_type == "Polygon":
        if geometry.area > 0:
            yield geometry
    elif hasattr(geometry, "geoms"):  # Multi* and collections: clipping can leave lines and points
        for part in geometry.geoms:
            yield from _polygons(part)


def iter_rows(geometry: BaseGeometry, zoom: int) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Yield (y, [(x_first, x_last), ...]) for each tile row the region covers, north to south."""
    geometry = check_geometry(geometry)
    check_zoom(zoom)
    n = math.pow(2, zoom)
    last = 2**zoom - 1
    west, south, east, north = geometry.bounds
    # One row of margin each side; rows that only touch the region clip to nothing and are skipped.
    y_first = max(mercantile.tile(west, north, zoom).y - 1, 0)
    y_last = min(mercantile.tile(west, south, zoom).y + 1, last)
    for chunk_first in range(y_first, y_last + 1, _CHUNK_ROWS):
        chunk_last = min(chunk_first + _CHUNK_ROWS - 1, y_last)
        chunk = shapely.intersection(
            geometry, box(west - 1, _lat(chunk_last + 1, n), east + 1, _lat(chunk_first, n))
        )
        if chunk.is_empty or chunk.area == 0:
            continue
        ys = list(range(chunk_first, chunk_last + 1))
        bands = [box(west - 1, _lat(y + 1, n), east + 1, _lat(y, n)) for y in ys]
        for y, piece in zip(ys, shapely.intersection(chunk, bands)):
            ranges = [_x_range(p.bounds[0], p.bounds[2], n, last) for p in _polygons(piece)]
            if ranges:
                yield y, _merge(ranges)


def iter_tiles(geometry: BaseGeometry, zoom: int) -> Iterator[mercantile.Tile]:
    """Stream the tiles whose interior overlaps the region's, row by row (north to south, west to east)."""
    for y, ranges in iter_rows(geometry, zoom):
        for lo, hi in ranges:
            # Tile._make skips Tile.__new__'s range check (x, y are in range by construction): ~5x faster.
            yield from map(mercantile.Tile._make, zip(range(lo, hi + 1), repeat(y), repeat(zoom)))


def count_tiles(geometry: BaseGeometry, zoom: int, max_tiles: int | None = None, what: str = "the region") -> int:
    """Number of tiles `iter_tiles` would yield, without listing them (memory: one row's ranges).
    With `max_tiles`, UserError as soon as the count passes it (`what` names the area)."""
    total = 0
    for _, ranges in iter_rows(geometry, zoom):
        total += sum(hi - lo + 1 for lo, hi in ranges)
        if max_tiles is not None and total > max_tiles:
            raise too_many_tiles(what, zoom, max_tiles, tile_area(geometry, zoom))
    return total


def tile_area(geometry: BaseGeometry, zoom: int) -> float:
    """The region's area in zoom-`zoom` tiles (web-mercator units): about the number of tiles it covers."""
    n = 2.0**zoom

    def to_tiles(lonlat: np.ndarray) -> np.ndarray:
        lat = np.radians(np.clip(lonlat[:, 1], -MAX_LAT, MAX_LAT))
        x = (lonlat[:, 0] + 180.0) / 360.0 * n
        y = (1.0 - np.arcsinh(np.tan(lat)) / np.pi) / 2.0 * n
        return np.stack([x, y], axis=1)

    return float(shapely.transform(geometry, to_tiles).area)


def too_many_tiles(what: str, zoom: int, max_tiles: int, about: float) -> UserError:
    """The one line that refuses a plan over `max_tiles`, with the region's size in tiles and the way past it."""
    suggest = int(float(f"{max(about, max_tiles + 1) * 1.05:.2g}"))  # two significant digits, above the estimate
    return UserError(f"{what} covers over {max_tiles:,} tiles at zoom {zoom} (about {about:,.0f}); pass "
                     f"--max-tiles {suggest} to plan them anyway (a build holds every tile in memory), "
                     "or choose a smaller area or zoom")


def check_plan_size(geometry: BaseGeometry | None, spec: ReleaseSpec | None, zoom: int, max_tiles: int,
                    what: str) -> None:
    """UserError when the region `geometry` (or the release `spec`'s sub-regions) at `zoom` covers
    more than `max_tiles` tiles; the count streams and stops at the cap, so this is fast either way."""
    if spec is None:
        assert geometry is not None
        count_tiles(geometry, zoom, max_tiles, what)
        return
    left = max_tiles
    for sub in spec.subregions:
        try:
            left -= count_tiles(sub.geometry, zoom, left, what)
        except UserError:
            about = sum(tile_area(s.geometry, zoom) for s in spec.subregions)
            raise too_many_tiles(what, zoom, max_tiles, about) from None


def iter_release_tiles(spec: ReleaseSpec) -> Iterator[tuple[SubRegion, mercantile.Tile]]:
    """Stream (SubRegion, tile) for every tile of a release, sub-region by sub-region."""
    for sub in spec.subregions:
        for tile in iter_tiles(sub.geometry, spec.zoom):
            yield sub, tile


@dataclass(frozen=True)
class RegionCount:
    """Planned tiles of one region (a release's sub-region carries its state and split)."""

    name: str
    tiles: int
    state: str | None = None
    split: str | None = None

    def as_dict(self) -> dict:
        """JSON-ready form, leaving out fields that do not apply."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def plan_release(name: str, max_tiles: int = MAX_TILES) -> dict:
    """The plan of a named release: per-sub-region and per-split tile counts (UserError past `max_tiles`)."""
    from scale_alibi.regions import load_release

    spec = load_release(name)
    check_plan_size(None, spec, spec.zoom, max_tiles, f"release {name}")
    counts = [RegionCount(s.name, count_tiles(s.geometry, spec.zoom), s.state, s.split) for s in spec.subregions]
    splits: dict[str, int] = {}
    for sub, c in zip(spec.subregions, counts):
        splits[sub.split] = splits.get(sub.split, 0) + c.tiles
    # Sub-regions never share a tile (tests check it), so the total is the sum.
    return {
        "release": spec.name,
        "zoom": spec.zoom,
        "tiles": sum(c.tiles for c in counts),
        "paper_samples": spec.paper_samples,
        "splits": splits,
        "regions": [c.as_dict() for c in counts],
    }


def plan_region(name_or_path: str, zoom: int, max_tiles: int = MAX_TILES) -> dict:
    """The plan of one region (a named outline or a GeoJSON file) at one zoom (UserError past `max_tiles`)."""
    from scale_alibi.regions import load_region

    check_zoom(zoom)
    tiles = count_tiles(load_region(name_or_path), zoom, max_tiles, f"region {name_or_path}")
    return {"zoom": zoom, "tiles": tiles, "regions": [RegionCount(str(name_or_path), tiles).as_dict()]}


# ------------------------------------------------------------------ scenes (optional, online)

def _asset_size(asset: dict, sign, client) -> int | None:
    """An asset's bytes: its `file:size` if the catalog gives one, else the file's Content-Length."""
    size = asset.get("file:size")
    if isinstance(size, (int, float)) and size >= 0:
        return int(size)
    try:
        response = client.head(sign(asset["href"]), follow_redirects=True)
        length = response.headers.get("content-length")
        return int(length) if response.status_code < 400 and length is not None else None
    except Exception:  # unreachable asset host: reported as unknown size, not fatal
        return None


def scene_summary(catalog: str, areas: list[BaseGeometry], datetime: str | None = None) -> dict:
    """Per layer, the catalog's scenes over the areas (once each) and the bytes of the assets a build reads."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from shapely.geometry import mapping

    from scale_alibi.curate.search import PAGE_LIMIT, SENSORS, complete_search, open_catalog, resolve_signer

    client = open_catalog(catalog)
    sign = resolve_signer(None)  # signs Planetary Computer blob hrefs only; others pass unchanged
    out: dict = {}
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(8) as pool:
        for layer, sensor in SENSORS.items():
            items: dict[str, dict] = {}
            for area in areas:
                kwargs = {"collections": [sensor.collection], "intersects": mapping(area), "limit": PAGE_LIMIT}
                if datetime:
                    kwargs["datetime"] = datetime
                try:
                    for item in complete_search(client, kwargs):
                        items.setdefault(item["id"], item)
                except UserError:
                    raise
                except Exception as exc:
                    reason = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
                    raise UserError(f"STAC search of {sensor.collection} at {catalog} failed ({reason})") from None
            assets = [it["assets"][k] for it in items.values() for k in sensor.assets if k in it.get("assets", {})]
            sizes = list(pool.map(lambda a: _asset_size(a, sign, http), assets))
            out[layer] = {
                "collection": sensor.collection,
                "scenes": len(items),
                "bytes": sum(s for s in sizes if s is not None),
                "assets": len(assets),
                "assets_unknown_size": sum(s is None for s in sizes),
            }
    return out
