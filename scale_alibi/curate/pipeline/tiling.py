"""Tiles and metatiles as the build carries them: one type, `mercantile.Tile` (x, y, z), from the plan to
the rename of a file into the public tree. A metatile (a block of tiles cut together) is the tile
`levels` up that holds them; its name ("z-x-y") keys its staging folder and its done record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

import mercantile

Metatile: TypeAlias = mercantile.Tile  # the ancestor tile of a block of tiles cut together


def metatile_of(tile: mercantile.Tile, levels: int) -> Metatile:
    """The metatile holding `tile`: its ancestor `levels` up (the tile itself at zoom < levels: zoom 0)."""
    k = max(0, tile.z - levels)
    # Tile._make skips Tile.__new__'s range check: x, y of an ancestor of a valid tile are in range.
    return mercantile.Tile._make((tile.x >> (tile.z - k), tile.y >> (tile.z - k), k))


def metatile_name(mt: Metatile) -> str:
    """A metatile's name in the build's working state: "z-x-y"."""
    return f"{mt.z}-{mt.x}-{mt.y}"


def parse_metatile_name(name: str) -> Metatile | None:
    """The metatile a name (optionally ending ".json") stands for (None: not a metatile's name)."""
    try:
        z, x, y = (int(v) for v in name.removesuffix(".json").split("-"))
    except ValueError:
        return None
    return mercantile.Tile._make((x, y, z))


def group_metatiles(tiles: dict[mercantile.Tile, str], levels: int) -> dict[Metatile, list[tuple[mercantile.Tile, str]]]:
    """{tile: split} grouped by metatile: each metatile's (tile, split) sorted by (x, y), metatiles in
    row order (y, then x)."""
    out: dict[Metatile, list[tuple[mercantile.Tile, str]]] = {}
    for tile, split in sorted(tiles.items()):
        out.setdefault(metatile_of(tile, levels), []).append((tile, split))
    return dict(sorted(out.items(), key=lambda kv: (kv[0].y, kv[0].x)))


def lonlat_bounds(tiles: Iterable[mercantile.Tile]) -> tuple[float, float, float, float]:
    """Lon/lat (west, south, east, north) of a set of tiles."""
    bs = [mercantile.bounds(t) for t in tiles]
    return min(b.west for b in bs), min(b.south for b in bs), max(b.east for b in bs), max(b.north for b in bs)
