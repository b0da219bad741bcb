"""Metatiles (blocks of tiles cut together) and their task, `cut_metatile`: read, choose, encode, publish."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mercantile

from scale_alibi.contract.errors import ScaleAlibiError
from scale_alibi.contract.host_memory import retain_freed_memory
from scale_alibi.contract.layout import tile_name  # the one writer of tiles (pyproject: the layout contract)
from scale_alibi.contract.release import HIRES_CHILDREN, content_hash
from scale_alibi.curate.pipeline.choose import choose_layer, describe_choice
from scale_alibi.curate.pipeline.output import ReleaseOutput
from scale_alibi.curate.pipeline.tiling import Metatile, lonlat_bounds, metatile_name
from scale_alibi.curate.search import TIMEOUT_S


class ReleaseSealed(ScaleAlibiError):
    """A metatile task ran after its release's manifest was written (its result is discarded)."""


@dataclass
class MetatileJob:
    """One task's input: a metatile's tiles and where its output goes (plain data: picklable)."""

    output: ReleaseOutput
    metatile: Metatile
    tiles: list[tuple[mercantile.Tile, str]]  # (tile, split), all at one zoom
    min_valid: float
    max_gap_days: float
    signer: Any = None
    catalog: str = ""
    timeout_s: float = TIMEOUT_S  # per network wait
    extra: dict = field(default_factory=dict)
    commit: bool = True  # False: stage only (a repair checks the staged bytes before using them)

    @property
    def z(self) -> int:
        """The zoom of the job's tiles."""
        return self.tiles[0][0].z

    # On the wire (to a Dask worker) the tiles travel as plain ints, one zoom per job: a Tile object
    # per tile would make a CONUS graph's pickled task inputs about half as large again.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["tiles"] = (self.z, [(t.x, t.y, split) for t, split in self.tiles])
        state["metatile"] = tuple(self.metatile)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        z, tiles = state["tiles"]
        state["tiles"] = [(mercantile.Tile._make((x, y, z)), split) for x, y, split in tiles]
        state["metatile"] = mercantile.Tile._make(state["metatile"])
        self.__dict__.update(state)


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

    # The tens-of-megabytes arrays of one metatile reuse the heap the previous one freed instead of
    # being mapped and zeroed anew (scale_alibi.contract.host_memory); applied once per process,
    # whichever process cuts: this one, a Dask worker here or on a cluster.
    retain_freed_memory()
    signer = resolve_signer(job.signer)

    def read(href: str, bounds, res: float, **options):
        return read_window(href, signer, bounds, res, timeout_s=job.timeout_s, **options)

    z = job.z
    tiles = [(t.x, t.y) for t, _ in job.tiles]  # the cut works on one zoom's grid: (x, y) within it
    split = {(t.x, t.y): s for t, s in job.tiles}
    bounds = lonlat_bounds(t for t, _ in job.tiles)
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
        naip = choose_layer("naip", tiles, ranked_for(naip_groups, lambda gs, t: rank_naip(gs)),
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
            chosen[layer] = choose_layer(layer, have, ranked, lambda ts: block_grid(z, ts), read, job.min_valid)
            have = [t for t in have if t in chosen[layer]]

    output = job.output
    if job.commit and output.is_finished():
        # A late duplicate of this task (its worker was presumed lost, or the driver moved on): the
        # release is sealed, and nothing may be written into it any more.
        raise ReleaseSealed(f"release {output.name} is finished; metatile {metatile_name(job.metatile)} not written again")
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
            describe_choice(row, layer, g, frac, footprints[t])
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
        describe_choice(row, "naip", g, frac, footprints[t])
        rows.append(row)
    record = {"metatile": [job.metatile.z, job.metatile.x, job.metatile.y], "rows": rows, "files": list(files)}
    if job.commit:
        output.publish(job.metatile, files, record)
    else:
        output.stage(job.metatile, files)
    return record
