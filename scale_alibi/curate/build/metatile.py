"""Metatiles (blocks of tiles cut together) and their task, `cut_metatile`: read, choose, encode, publish."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import mercantile

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.layout import tile_name  # the one writer of tiles (pyproject: the layout contract)
from scale_alibi.contract.release import HIRES_CHILDREN, content_hash
from scale_alibi.curate.build.choose import _choose, _describe
from scale_alibi.curate.build.output import ReleaseOutput
from scale_alibi.curate.search import TIMEOUT_S


def metatile_key(z: int, x: int, y: int, levels: int) -> tuple[int, int, int]:
    k = max(0, z - levels)
    return k, x >> (z - k), y >> (z - k)


def group_metatiles(tiles: dict[tuple[int, int], str], z: int, levels: int) -> dict[tuple[int, int, int], list]:
    """Tiles grouped by their metatile (ancestor `levels` up), each list sorted, metatiles in (x, y) order."""
    out: dict[tuple[int, int, int], list] = {}
    for (x, y), split in sorted(tiles.items()):
        out.setdefault(metatile_key(z, x, y, levels), []).append((x, y, split))
    return dict(sorted(out.items(), key=lambda kv: (kv[0][2], kv[0][1])))


def lonlat_bounds(z: int, tiles: Iterable[tuple]) -> tuple[float, float, float, float]:
    """Lon/lat bounds of a set of tiles at zoom z."""
    bs = [mercantile.bounds(t[0], t[1], z) for t in tiles]
    return min(b.west for b in bs), min(b.south for b in bs), max(b.east for b in bs), max(b.north for b in bs)


class ReleaseSealed(ScaleAlibiError):
    """A metatile task ran after its release's manifest was written (its result is discarded)."""


@dataclass
class MetatileJob:
    """One task's input: a metatile's tiles and where its output goes (plain data: picklable)."""

    output: ReleaseOutput
    z: int
    metatile: tuple[int, int, int]
    tiles: list[tuple[int, int, str]]
    min_valid: float
    max_gap_days: float
    signer: Any = None
    catalog: str = ""
    timeout_s: float = TIMEOUT_S  # per network wait
    extra: dict = field(default_factory=dict)
    commit: bool = True  # False: stage only (a repair checks the staged bytes before using them)


def _tile_lonlat(z: int, x: int, y: int):
    from shapely.geometry import box

    b = mercantile.bounds(x, y, z)
    return box(b.west, b.south, b.east, b.north)


def cut_metatile(job: MetatileJob, s2_items: list, s1_items: list, naip_items: list) -> dict:
    """Cut, validate, encode and stage every complete triplet of one metatile; returns its done record.

    Pure in its inputs (items and job); its only effect is writing the metatile's files and done
    record through `job.output`."""
    from scale_alibi.curate.encode import encode_hwc
    from scale_alibi.curate.reader import gdal_env, read_window
    from scale_alibi.curate.search import resolve_signer
    from scale_alibi.curate.selection import groups_touching, make_groups, rank_by_gap, rank_naip
    from scale_alibi.curate.warp import block_grid, box_down2

    signer = resolve_signer(job.signer)

    def read(href: str, bounds, res: float, **options):
        return read_window(href, signer, bounds, res, timeout_s=job.timeout_s, **options)

    z = job.z
    tiles = [(x, y) for x, y, _ in job.tiles]
    split = {(x, y): s for x, y, s in job.tiles}
    bounds = lonlat_bounds(z, tiles)
    footprints = {t: _tile_lonlat(z, *t) for t in tiles}

    def ranked_for(groups, rank):
        out = {}
        for t in tiles:
            here = [g for g in groups if any(_fp(it).intersects(footprints[t]) for it in g.items)]
            out[t] = rank(here, t)
        return out

    from scale_alibi.curate.selection import footprint as _fp

    with gdal_env(job.timeout_s):
        naip_groups = groups_touching(make_groups(naip_items), bounds)
        naip = _choose("naip", tiles, ranked_for(naip_groups, lambda gs, t: rank_naip(gs)),
                       lambda ts: block_grid(z + 1, [(2 * x + dx, 2 * y + dy) for x, y in ts for dx in (0, 1) for dy in (0, 1)]),
                       read, job.min_valid)
        have = [t for t in tiles if t in naip]
        chosen = {"naip": naip}
        for layer, items in (("s2", s2_items), ("s1", s1_items)):
            groups = groups_touching(make_groups(items), bounds)
            ranked = {}
            for t in have:
                here = [g for g in groups if any(_fp(it).intersects(footprints[t]) for it in g.items)]
                ranked[t] = rank_by_gap(here, naip[t][0].datetime, job.max_gap_days)
            chosen[layer] = _choose(layer, have, ranked, lambda ts: block_grid(z, ts), read, job.min_valid)
            have = [t for t in have if t in chosen[layer]]

    output = job.output
    if job.commit and output.is_finished():
        # A late duplicate of this task (its worker was presumed lost, or the driver moved on): the
        # release is sealed, and nothing may be written into it any more.
        raise ReleaseSealed(f"release {output.name} is finished; metatile {job.metatile} not written again")
    output.begin(job.metatile)
    rows, files = [], {}
    for t in have:
        x, y = t
        row: dict[str, Any] = {"z": z, "x": x, "y": y, "split": split[t]}
        for layer in ("s1", "s2"):
            g, data, frac = chosen[layer][t]
            png = encode_hwc(layer, data)
            files[tile_name(layer, z, x, y)] = png
            row[f"hash_{layer}"] = content_hash(png)
            _describe(row, layer, g, frac, footprints[t])
        g, hires, frac = naip[t]
        png = encode_hwc("naip", box_down2(hires))
        files[tile_name("naip", z, x, y)] = png
        row["hash_naip"] = content_hash(png)
        hashes = []
        for dx, dy in HIRES_CHILDREN:
            child = hires[dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256]
            png = encode_hwc("naip", child)
            files[tile_name("naip", z + 1, 2 * x + dx, 2 * y + dy)] = png
            hashes.append(content_hash(png))
        row["hash_naip_hires"] = hashes
        _describe(row, "naip", g, frac, footprints[t])
        rows.append(row)
    record = {"metatile": list(job.metatile), "rows": rows, "files": list(files)}
    if job.commit:
        output.publish(job.metatile, files, record)
    else:
        output.stage(job.metatile, files)
    return record
