"""A STAC item parsed once into a typed, frozen `Scene` (as odc-stac parses its items): what search,
selection, scene choice and the manifest read of it, never the raw dict.

Planetary Computer's items are not uniform, and every form below occurs in its catalog:
- times in any RFC 3339 form: ``2024-04-19T04:59:10.436706Z``, ``2024-04-19 04:59:04.22+00:00``
  (a space, two fraction digits: S1 RTC ``start_datetime``), nanosecond fractions, no zone (taken as
  UTC); ``datetime`` may be null when ``start_datetime``/``end_datetime`` are given;
- ``naip:year`` a string ("2022"), ``sat:relative_orbit`` an int or a numeric string;
- an asset's nodata in its ``raster:bands`` (S1 RTC: -32768), or only in the collection's
  ``item_assets``, or nowhere (S2 ``visual``: the file's tag, when it has one, is all there is);
- ``updated`` absent (recorded as null), ``msft:requires_account`` on the collection (S1 RTC).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

# date, a "T", "t" or space, time, an optional fraction of any length, an optional zone
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?)?\s*([Zz]|[+-]\d{2}:?\d{2})?")


def parse_time(value: str) -> datetime:
    """An RFC 3339 / ISO 8601 timestamp in any of the forms above, as an aware UTC datetime.

    Raises ValueError on anything else."""
    m = _RFC3339.fullmatch(value.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    day, clock, fraction, zone = m.groups()
    micros = (fraction or "").ljust(6, "0")[:6]  # nanoseconds are cut to what datetime holds
    text = f"{day}T{clock or '00:00:00'}.{micros}"
    if zone and zone not in ("Z", "z"):
        text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    dt = datetime.fromisoformat(text)
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def format_time(dt: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a "Z" (the form the manifest records)."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Asset:
    """One asset the build reads: its unsigned href and the nodata value its metadata declares."""

    href: str
    nodata: float | None  # from the item's raster:bands, else the collection's item_assets; None: not declared


@dataclass(frozen=True)
class Scene:
    """One STAC item as the build uses it (picklable: it travels to Dask workers)."""

    id: str
    collection: str
    layer: str  # "s1", "s2" or "naip"
    datetime: datetime  # aware, UTC: `datetime`, else `start_datetime`, else `end_datetime`
    footprint: BaseGeometry  # lon/lat: the item's geometry, else its bbox
    assets: tuple[tuple[str, Asset], ...]  # (key, asset) of the keys the layer reads that the item has
    updated: str | None = None
    cloud_cover: float | None = None  # eo:cloud_cover, percent
    orbit_state: str | None = None  # sat:orbit_state
    relative_orbit: int | None = None  # sat:relative_orbit
    instrument_mode: str | None = None  # sar:instrument_mode
    mgrs_tile: str | None = None  # s2:mgrs_tile
    naip_year: int | None = None  # naip:year, else the year of `datetime`
    naip_state: str | None = None
    gsd: float | None = None  # metres: the item's gsd, else the first read asset's
    requires_account: bool = False  # msft:requires_account (item or collection): sign with a subscription key

    def asset(self, key: str) -> Asset | None:
        return dict(self.assets).get(key)

    def href(self, key: str) -> str:
        """The unsigned href of asset `key` (KeyError when the item has none)."""
        found = self.asset(key)
        if found is None:
            raise KeyError(f"{self.id} has no asset {key!r}")
        return found.href

    def has(self, key: str) -> bool:
        return self.asset(key) is not None

    @property
    def day(self) -> str:
        """The UTC acquisition date, YYYY-MM-DD."""
        return self.datetime.strftime("%Y-%m-%d")


def _number(value: Any) -> float | None:
    """A float from a number or numeric string (PC writes some numbers as strings); None otherwise."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out


def _band_nodata(meta: dict | None) -> float | None:
    bands = (meta or {}).get("raster:bands") or []
    if not bands or not isinstance(bands[0], dict) or "nodata" not in bands[0]:
        return None
    value = bands[0]["nodata"]
    if isinstance(value, str) and value.lower() in ("nan", "+nan", "-nan"):
        return math.nan
    return _number(value)


def _when(props: dict) -> datetime:
    for key in ("datetime", "start_datetime", "end_datetime"):
        value = props.get(key)
        if value:
            return parse_time(str(value))
    raise ValueError("no datetime, start_datetime or end_datetime")


def parse_scene(item: dict[str, Any], layer: str, keys: tuple[str, ...], collection: dict[str, Any] | None = None
                ) -> Scene:
    """The Scene of a STAC item dict of `layer`, keeping assets `keys`; `collection` (its STAC
    Collection dict, optional) supplies ``item_assets`` nodata and ``msft:requires_account``.

    Raises ValueError when the item has no usable time or footprint."""
    props = item.get("properties") or {}
    coll = collection or {}
    item_assets = coll.get("item_assets") or {}
    assets = []
    for key in keys:
        meta = (item.get("assets") or {}).get(key)
        if not meta or not meta.get("href"):
            continue
        nodata = _band_nodata(meta)
        if nodata is None:
            nodata = _band_nodata(item_assets.get(key))
        assets.append((key, Asset(str(meta["href"]), nodata)))
    if item.get("geometry"):
        footprint = shape(item["geometry"])
    elif item.get("bbox"):
        footprint = box(*item["bbox"][:2], *item["bbox"][-2:]) if len(item["bbox"]) == 6 else box(*item["bbox"])
    else:
        raise ValueError(f"item {item.get('id')!r} has neither geometry nor bbox")
    dt = _when(props)
    year = _number(props.get("naip:year")) if layer == "naip" else None
    gsd = _number(props.get("gsd"))
    if gsd is None:
        for key, _ in assets:
            gsd = _number(((item.get("assets") or {}).get(key) or {}).get("gsd"))
            if gsd is not None:
                break
    orbit = _number(props.get("sat:relative_orbit"))
    cloud = _number(props.get("eo:cloud_cover"))
    return Scene(
        id=str(item["id"]),
        collection=str(item.get("collection") or coll.get("id") or ""),
        layer=layer,
        datetime=dt,
        footprint=footprint,
        assets=tuple(assets),
        updated=props.get("updated"),
        cloud_cover=cloud,
        orbit_state=props.get("sat:orbit_state"),
        relative_orbit=None if orbit is None else int(orbit),
        instrument_mode=props.get("sar:instrument_mode"),
        mgrs_tile=props.get("s2:mgrs_tile"),
        naip_year=int(year) if year is not None else (dt.year if layer == "naip" else None),
        naip_state=props.get("naip:state"),
        gsd=gsd,
        requires_account=bool(props.get("msft:requires_account", coll.get("msft:requires_account", False))),
    )
