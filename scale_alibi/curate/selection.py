"""Which scenes make each tile: groups that may be mosaicked together, ranked per tile.

A *group* is the set of items that may fill each other's nodata in one mosaic:
- ``s2``: one acquisition day (UTC date of ``datetime``) — never mix days;
- ``s1``: one day, one orbit direction (``sat:orbit_state``) and one relative orbit
  (``sat:relative_orbit``) — never mix geometries;
- ``naip``: one capture year (``naip:year``) and state.
Within a group, items are mosaicked in a fixed order (least cloud, then id), first wins.

Ranking (per tile, lazily evaluated by the build):
- NAIP is the anchor: the newest year first.
- S2 and S1: closest in time to the tile's chosen NAIP capture, within ``max_gap_days``
  (default 730 days: NAIP revisits a state every 2-3 years, so the guard must allow a season or
  two; closest-first ranking still takes the nearest scene when one exists); ties by cloud cover, then group key.
The build walks each tile's ranked list and takes the first group whose mosaic is usable on
that tile (valid data, and for S2 not cloud by SCL, on >= ``min_valid`` of its pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from shapely.geometry import box

from scale_alibi.curate.scene import Scene

MAX_GAP_DAYS = 730.0


def group_key(item: Scene) -> str:
    """The mosaic group an item belongs to (a readable, sortable string; days in UTC)."""
    if item.layer == "s2":
        return f"s2/{item.day}"
    if item.layer == "s1":
        orbit = "?" if item.relative_orbit is None else item.relative_orbit
        return f"s1/{item.day}/{item.orbit_state or '?'}/{orbit}"
    return f"naip/{item.naip_year}/{item.naip_state or '?'}"


@dataclass
class Group:
    """Items mosaicked together, in fill order, and the group's summary used for ranking."""

    key: str
    layer: str
    items: list[Scene] = field(default_factory=list)

    @property
    def datetime(self) -> datetime:
        return min(it.datetime for it in self.items)

    @property
    def cloud_cover(self) -> float | None:
        values = [it.cloud_cover for it in self.items if it.cloud_cover is not None]
        return max(values) if values else None


def make_groups(items: list[Scene]) -> list[Group]:
    """Group items (see module docstring); items in each group in fill order."""
    groups: dict[str, Group] = {}
    for it in items:
        key = group_key(it)
        groups.setdefault(key, Group(key, it.layer)).items.append(it)
    for g in groups.values():
        g.items.sort(key=lambda it: (it.cloud_cover or 0.0, it.id))
    return [groups[k] for k in sorted(groups)]


def footprint(item: Scene):
    """The item's footprint (lon/lat): its STAC geometry, or its bbox."""
    return item.footprint


def groups_touching(groups: list[Group], bounds_lonlat) -> list[Group]:
    """Groups with at least one item whose footprint intersects `bounds_lonlat`, restricted to those items."""
    area = box(*bounds_lonlat)
    out = []
    for g in groups:
        items = [it for it in g.items if it.footprint.intersects(area)]
        if items:
            out.append(Group(g.key, g.layer, items))
    return out


def rank_naip(groups: list[Group]) -> list[Group]:
    """NAIP groups, newest capture first."""
    return sorted(groups, key=lambda g: (-g.datetime.timestamp(), g.key))


def rank_by_gap(groups: list[Group], anchor: datetime, max_gap_days: float = MAX_GAP_DAYS) -> list[Group]:
    """S2/S1 groups within `max_gap_days` of `anchor`, closest first (ties: less cloud, then key)."""
    def gap(g: Group) -> float:
        return abs((g.datetime - anchor).total_seconds()) / 86400.0

    kept = [g for g in groups if gap(g) <= max_gap_days]
    return sorted(kept, key=lambda g: (round(gap(g), 6), g.cloud_cover or 0.0, g.key))
