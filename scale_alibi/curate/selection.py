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
from datetime import datetime, timezone
from typing import Any

from shapely.geometry import box, shape

MAX_GAP_DAYS = 730.0


def _dt(item: dict[str, Any]) -> datetime:
    dt = datetime.fromisoformat(item["datetime"].replace("Z", "+00:00"))
    # In UTC: a group's day is the UTC date even when the catalog writes a local offset.
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def group_key(item: dict[str, Any]) -> str:
    """The mosaic group an item belongs to (a readable, sortable string)."""
    p = item["properties"]
    day = _dt(item).strftime("%Y-%m-%d")
    if item["layer"] == "s2":
        return f"s2/{day}"
    if item["layer"] == "s1":
        return f"s1/{day}/{p.get('sat:orbit_state', '?')}/{p.get('sat:relative_orbit', '?')}"
    return f"naip/{p.get('naip:year') or _dt(item).year}/{p.get('naip:state', '?')}"


@dataclass
class Group:
    """Items mosaicked together, in fill order, and the group's summary used for ranking."""

    key: str
    layer: str
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def datetime(self) -> datetime:
        return min(_dt(it) for it in self.items)

    @property
    def cloud_cover(self) -> float | None:
        values = [it["properties"].get("eo:cloud_cover") for it in self.items]
        values = [float(v) for v in values if v is not None]
        return max(values) if values else None


def make_groups(items: list[dict[str, Any]]) -> list[Group]:
    """Group items (see module docstring); items in each group in fill order."""
    groups: dict[str, Group] = {}
    for it in items:
        key = group_key(it)
        groups.setdefault(key, Group(key, it["layer"])).items.append(it)
    for g in groups.values():
        g.items.sort(key=lambda it: (float(it["properties"].get("eo:cloud_cover") or 0.0), it["id"]))
    return [groups[k] for k in sorted(groups)]


def footprint(item: dict[str, Any]):
    """The item's footprint (lon/lat) from its STAC geometry, or its bbox."""
    if item.get("geometry"):
        return shape(item["geometry"])
    return box(*item["bbox"])


def groups_touching(groups: list[Group], bounds_lonlat) -> list[Group]:
    """Groups with at least one item whose footprint intersects `bounds_lonlat`, restricted to those items."""
    area = box(*bounds_lonlat)
    out = []
    for g in groups:
        items = [it for it in g.items if footprint(it).intersects(area)]
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
