"""What the default world's scenes imply a build's manifest must hold: the rows a build at a zoom
must (and may) produce, and the UTM zone edge that the hard cases straddle; and its items, searched."""

from __future__ import annotations

from collections import defaultdict

import mercantile
from shapely.geometry import box, shape
from shapely.ops import unary_union


def search(world, collection: str, **kw) -> list:
    """The world's STAC items of `collection` over its bbox (pystac Items), through its real STAC API."""
    import pystac_client

    client = pystac_client.Client.open(world.stac_url)
    return list(client.search(collections=[collection], bbox=list(world.bbox), **kw).items())


def world_items(world) -> dict[str, list]:
    """Every item of the world per layer, as dicts."""
    return {layer: [it.to_dict() for it in search(world, coll)]
            for layer, coll in (("s2", "sentinel-2-l2a"), ("s1", "sentinel-1-rtc"), ("naip", "naip"))}


def expected_rows(world, z: int, min_valid: float = 0.99, datetime_window=None):
    """Complete tiles implied by the world's scene footprints alone (independent of scale_alibi.curate.pipeline):
    a tile is complete when, for every sensor, one mosaic group (S2: a day with cloud <= 20 %; S1:
    a day+orbit; NAIP: a year) covers >= min_valid of it. Returns (complete, ambiguous)."""
    items = world_items(world)
    groups: dict[str, dict] = {}
    for layer, its in items.items():
        g = defaultdict(list)
        for it in its:
            p = it["properties"]
            day = p["datetime"][:10]
            if datetime_window and layer != "naip" and not (datetime_window[0] <= day <= datetime_window[1]):
                continue
            if layer == "s2":
                if p["eo:cloud_cover"] > 20:
                    continue
                key = day
            elif layer == "s1":
                key = (day, p["sat:orbit_state"], p["sat:relative_orbit"])
            else:
                key = p["naip:year"]
            g[key].append(shape(it["geometry"]))
        groups[layer] = {k: unary_union(v) for k, v in g.items()}
    w, s, e, n = world.bbox
    complete, ambiguous = set(), set()
    for t in mercantile.tiles(w, s, e, n, zooms=z):
        b = mercantile.bounds(t)
        tb = box(b.west, b.south, b.east, b.north)
        if tb.intersection(box(w, s, e, n)).area <= 0:
            continue
        # NAIP: each of the four z+1 children must be covered on its own.
        parts = {"s2": [tb], "s1": [tb], "naip": [box(*mercantile.bounds(c)) for c in mercantile.children(t)]}
        fracs = [max((min(u.intersection(p).area / p.area for p in parts[layer]) for u in groups[layer].values()),
                     default=0.0) for layer in ("s2", "s1", "naip")]
        if min(fracs) >= min_valid + 0.003:
            complete.add((t.x, t.y))
        elif min(fracs) > min_valid - 0.003:
            ambiguous.add((t.x, t.y))  # within a pixel row of the threshold: either answer is right
    return complete, ambiguous


def zone_edge(world) -> float:
    """The UTM zone boundary (a multiple of 6 degrees) the world straddles."""
    w, _, e, _ = world.bbox
    edge = -180.0 + 6.0 * round(((w + e) / 2 + 180.0) / 6.0)
    assert w < edge < e
    return edge


def across_edge(rows, edge: float) -> list:
    return [r for r in rows if mercantile.bounds(r["x"], r["y"], r["z"]).west < edge < mercantile.bounds(r["x"], r["y"], r["z"]).east]
