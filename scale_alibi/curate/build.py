"""`curate build`: STAC scenes to aligned XYZ triplets, as a Dask graph of pure functions.

Graph: ``search(block, layer)`` tasks -> ``cut_metatile(job, items...)`` tasks (each reprojects one
block of tiles once per scene group, picks per tile the best group of each sensor, encodes PNGs
and stages them) -> the driver commits staged files and writes the manifest last.

On-disk protocol (what makes kill -9 at any moment safe and a rerun cheap)::

    OUT/<release>/.lock                         flock held by the one build writing this release
    OUT/<release>/.build/staging/<mt>/...       a metatile's PNGs while it is being written
    OUT/<release>/.build/done/<mt>.json         written atomically once all its PNGs are staged
    OUT/<release>/<layer>/<z>/<x>/<y>.png       public tree: files move here (rename) only after
                                                their metatile's done record exists
    OUT/<release>/manifest.parquet              last; then .build/ and .lock are removed

A rerun skips every metatile with a done record (it finishes any interrupted moves from staging,
without reading a COG byte), discards other staging, and a rerun of a finished release (manifest
present, same parameters) reads nothing at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mercantile
import numpy as np

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import (
    HIRES_CHILDREN,
    LAYERS,
    REQUIRED_COLUMNS,
    Release,
    check_release_name,
    content_hash,
    fsync_paths,
    manifest_metadata,
    read_manifest,
    resolves_inside,
    write_bytes_atomic,
    write_manifest,
)
from scale_alibi.curate.search import TIMEOUT_S

log = logging.getLogger(__name__)

MAX_BUILD_ZOOM = 21  # NAIP is also cut at zoom + 1, and web-mercator planning stops at 22
SEARCH_ZOOM = 9  # one STAC search per layer per z9 block (~78 km): bounded result pages anywhere
SCL_CLOUD = (3, 8, 9, 10)  # S2 scene classes treated as unusable: cloud shadow, cloud med/high, cirrus


@dataclass(frozen=True)
class BuildParams:
    """Everything that decides a release's content (recorded in the manifest; a rerun must match)."""

    release: str
    zoom: int
    region: str
    datetime: str | None = None
    max_cloud: float = 20.0
    naip_years: tuple[int, int] | None = None
    max_gap_days: float = 730.0
    min_valid: float = 0.99
    metatile_levels: int = 3
    heldout_fraction: float = 0.25
    split_levels: int = 2
    s1_mode: str = "IW"


# ------------------------------------------------------------------------------------- planning

def split_of(z: int, x: int, y: int, fraction: float, levels: int) -> str:
    """Deterministic spatially blocked split: the tile's ancestor `levels` up, hashed, is held out with
    probability `fraction` (all tiles of one block share a split, so neighbours never leak)."""
    k = max(0, z - levels)
    bx, by = x >> (z - k), y >> (z - k)
    h = int.from_bytes(hashlib.sha256(f"scale-alibi-split/{k}/{bx}/{by}".encode()).digest()[:8], "big")
    return "heldout" if h / 2**64 < fraction else "train"


def plan_tiles(params: BuildParams, geometry=None, spec=None) -> dict[tuple[int, int], str]:
    """{(x, y): split} of every tile of the build at `params.zoom` (a region or a named release)."""
    from scale_alibi.curate.plan import iter_release_tiles, iter_tiles

    tiles: dict[tuple[int, int], str] = {}
    if spec is not None:
        for sub, t in iter_release_tiles(spec):
            tiles.setdefault((t.x, t.y), sub.split)
    else:
        for t in iter_tiles(geometry, params.zoom):
            tiles[(t.x, t.y)] = split_of(params.zoom, t.x, t.y, params.heldout_fraction, params.split_levels)
    return tiles


def metatile_key(z: int, x: int, y: int, levels: int) -> tuple[int, int, int]:
    k = max(0, z - levels)
    return k, x >> (z - k), y >> (z - k)


def group_metatiles(tiles: dict[tuple[int, int], str], z: int, levels: int) -> dict[tuple[int, int, int], list]:
    """Tiles grouped by their metatile (ancestor `levels` up), each list sorted, metatiles in (x, y) order."""
    out: dict[tuple[int, int, int], list] = {}
    for (x, y), split in sorted(tiles.items()):
        out.setdefault(metatile_key(z, x, y, levels), []).append((x, y, split))
    return dict(sorted(out.items(), key=lambda kv: (kv[0][2], kv[0][1])))


def search_blocks(metatiles: Iterable[tuple[int, int, int]]) -> dict[mercantile.Tile, list]:
    """Metatiles grouped by the SEARCH_ZOOM block whose STAC searches feed them (one task per block and layer)."""
    blocks: dict[mercantile.Tile, list] = {}
    for mt in metatiles:
        tile = mercantile.Tile(mt[1], mt[2], mt[0])
        blocks.setdefault(mercantile.parent(tile, zoom=SEARCH_ZOOM) if mt[0] > SEARCH_ZOOM else tile, []).append(mt)
    return blocks


def _mt_name(mt: tuple[int, int, int]) -> str:
    return f"{mt[0]}-{mt[1]}-{mt[2]}"


def _confined(path: Path, root: Path) -> Path:
    """`path`, once proven to resolve (symlinks followed) strictly inside `root`; the build writes or
    deletes nothing that is not, so a crafted name or a planted symlink cannot reach other files."""
    if not resolves_inside(path, root):
        raise UserError(f"refusing to write {path}: it resolves outside {root}; remove the link or "
                        "choose another --out")
    return path


def lonlat_bounds(z: int, tiles: Iterable[tuple]) -> tuple[float, float, float, float]:
    """Lon/lat bounds of a set of tiles at zoom z."""
    bs = [mercantile.bounds(t[0], t[1], z) for t in tiles]
    return min(b.west for b in bs), min(b.south for b in bs), max(b.east for b in bs), max(b.north for b in bs)


# ------------------------------------------------------------------------------ metatile cutting

@dataclass
class MetatileJob:
    """One task's input: a metatile's tiles and where to stage its output (plain data: picklable)."""

    release_dir: str
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


def _render(group, layer: str, grid, read):
    """Read every item of `group` over `grid` with `read` (href, bounds, res, **options), warp and mosaic:
    (data, usable mask)."""
    from scale_alibi.curate.warp import warp

    bounds = grid.bounds
    if layer == "s2":
        visual = [read(it["assets"]["visual"], bounds, grid.res, indexes=[1, 2, 3]) for it in group.items]
        data, valid = warp([s for s in visual if s is not None], grid, np.uint8, 0)
        scl_srcs = [read(it["assets"]["SCL"], bounds, grid.res, indexes=[1], margin_px=1)
                    for it in group.items if "SCL" in it["assets"]]
        scl_srcs = [s for s in scl_srcs if s is not None]
        if scl_srcs:

            scl, scl_valid = warp(scl_srcs, grid, np.uint8, 0, resampling="nearest")
            valid &= ~(scl_valid & np.isin(scl[..., 0], SCL_CLOUD))
        return data, valid
    if layer == "s1":
        srcs = []
        for it in group.items:
            vv = read(it["assets"]["vv"], bounds, grid.res, indexes=[1])
            vh = read(it["assets"]["vh"], bounds, grid.res, indexes=[1])
            if vv is None or vh is None:
                continue
            if vv.data.shape != vh.data.shape or vv.transform != vh.transform:
                raise RuntimeError(f"{it['id']}: vv and vh grids differ")
            vv.data = np.concatenate([vv.data, vh.data]).astype(np.float32, copy=False)
            srcs.append(vv)
        nodata = srcs[0].nodata if srcs and srcs[0].nodata is not None else -32768.0
        return warp(srcs, grid, np.float32, nodata)
    # naip: RGB of the RGBN image
    srcs = [read(it["assets"]["image"], bounds, grid.res, indexes=[1, 2, 3]) for it in group.items]
    return warp([s for s in srcs if s is not None], grid, np.uint8, 0)


def _choose(layer: str, tiles: list[tuple[int, int]], ranked: dict, grid_for, read, min_valid: float):
    """Walk each tile's ranked groups; the first usable one wins. Returns {tile: (group, data, valid_frac)}.

    Groups are rendered lazily, over the block of the tiles that still need them, so a fallback
    scene costs bytes only where the first choice failed."""
    chosen: dict[tuple[int, int], tuple] = {}
    pos = {t: 0 for t in tiles}
    pending = [t for t in tiles if ranked.get(t)]
    while pending:
        need: dict[str, list] = {}
        groups = {}
        for t in pending:
            g = ranked[t][pos[t]]
            need.setdefault(g.key, []).append(t)
            groups[g.key] = g
        still = []
        for key in sorted(need):
            ts = need[key]
            grid = grid_for(ts)
            data, valid = _render(groups[key], layer, grid, read)
            for t in ts:
                sl = _slice(grid, layer, t)
                v = valid[sl]
                # NAIP: every one of the four z+1 tiles must pass, not just their 512 px union.
                frac = float(min(v[:256, :256].mean(), v[:256, 256:].mean(), v[256:, :256].mean(), v[256:, 256:].mean())
                             if layer == "naip" else v.mean())
                if frac >= min_valid:
                    chosen[t] = (groups[key], data[sl], frac)
                else:
                    pos[t] += 1
                    if pos[t] < len(ranked[t]):
                        still.append(t)
        pending = still
    return chosen


def _slice(grid, layer, t):
    if layer == "naip":  # grid at z+1: the tile is its 2x2 children
        r0, c0 = (t[1] * 2 - grid.y0) * grid.size, (t[0] * 2 - grid.x0) * grid.size
        return slice(r0, r0 + 2 * grid.size), slice(c0, c0 + 2 * grid.size)
    return grid.tile_slice(*t)


def cut_metatile(job: MetatileJob, s2_items: list, s1_items: list, naip_items: list) -> dict:
    """Cut, validate, encode and stage every complete triplet of one metatile; returns its done record.

    Pure in its inputs (items and job); its only effect is writing the metatile's staging
    directory and done record under `job.release_dir/.build`."""
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

    release = Release(Path(job.release_dir).parent, Path(job.release_dir).name)
    release_dir = Path(job.release_dir)
    staging = _confined(release_dir / ".build" / "staging" / _mt_name(job.metatile), release_dir.parent)
    done = _confined(release_dir / ".build" / "done" / f"{_mt_name(job.metatile)}.json", release_dir.parent)
    # A retry (Dask reruns a lost worker's task) replaces an earlier attempt's staging: drop that
    # attempt's done record first, or a rerun would trust it over files this attempt removed.
    done.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    rows, files = [], []
    for t in have:
        x, y = t
        row: dict[str, Any] = {"z": z, "x": x, "y": y, "split": split[t]}
        pngs: dict[Path, bytes] = {}
        for layer in ("s1", "s2"):
            g, data, frac = chosen[layer][t]
            png = encode_hwc(layer, data)
            pngs[release.tile_path(layer, z, x, y)] = png
            row[f"hash_{layer}"] = content_hash(png)
            _describe(row, layer, g, frac, footprints[t])
        g, hires, frac = naip[t]
        png = encode_hwc("naip", box_down2(hires))
        pngs[release.tile_path("naip", z, x, y)] = png
        row["hash_naip"] = content_hash(png)
        hashes = []
        for dx, dy in HIRES_CHILDREN:
            child = hires[dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256]
            png = encode_hwc("naip", child)
            pngs[release.tile_path("naip", z + 1, 2 * x + dx, 2 * y + dy)] = png
            hashes.append(content_hash(png))
        row["hash_naip_hires"] = hashes
        _describe(row, "naip", g, frac, footprints[t])
        for path, data in pngs.items():
            rel = path.relative_to(release.path)
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # private until the done record below commits it
            files.append(str(rel))
        rows.append(row)
    staged = [staging / f for f in files]
    fsync_paths([*staged, *_dirs_up_to(staged, staging.parent)])  # durable before the record names them
    record = {"metatile": list(job.metatile), "rows": rows, "files": files}
    if not job.commit:
        return record
    write_bytes_atomic(done, json.dumps(record, sort_keys=True).encode())
    commit_staging(release_dir, job.metatile, record)
    return record


def _dirs_up_to(files: Iterable[Path], top: Path) -> list[Path]:
    """Every directory from each file's parent up to `top`: new directories are entries to sync too."""
    dirs: set[Path] = set()
    for f in files:
        d = Path(f).parent
        while d not in dirs and d != top.parent:
            dirs.add(d)
            if d == top:
                break
            d = d.parent
    return sorted(dirs)


def _describe(row: dict, layer: str, group, frac: float, tile_fp) -> None:
    from scale_alibi.curate.selection import footprint

    used = [it for it in group.items if footprint(it).intersects(tile_fp)]
    row[f"{layer}_group"] = group.key
    row[f"{layer}_items"] = [it["id"] for it in used]
    row[f"{layer}_datetime"] = group.datetime.isoformat()
    row[f"{layer}_valid"] = round(frac, 6)
    if layer == "s2":
        cc = [float(it["properties"].get("eo:cloud_cover", 0.0) or 0.0) for it in used]
        row["s2_cloud_cover"] = max(cc) if cc else None
    if layer == "s1":
        p = used[0]["properties"] if used else {}
        row["s1_orbit_state"] = p.get("sat:orbit_state")
        row["s1_relative_orbit"] = None if p.get("sat:relative_orbit") is None else int(p["sat:relative_orbit"])
    if layer == "naip":
        p = used[0]["properties"] if used else {}
        row["naip_year"] = str(p.get("naip:year")) if p.get("naip:year") is not None else None


def commit_staging(release_dir: Path, metatile, record: dict) -> None:
    """Move a recorded metatile's staged files into the public tree (idempotent; renames only)."""
    staging = _confined(release_dir / ".build" / "staging" / _mt_name(metatile), release_dir.parent)
    if not staging.exists():
        return
    moved = []
    for rel in record["files"]:
        src = staging / rel
        if src.exists():
            dst = _confined(release_dir / rel, release_dir.parent)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append(dst)
    fsync_paths(_dirs_up_to(moved, release_dir))  # the renames are durable before a manifest names the files
    shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------ the driver

def recut_files(rel: Release, params: BuildParams, metatiles: dict, damage: list, catalog: str, signer: Any,
                progress: bool, echo: Callable[[str], None]) -> list[str]:
    """Re-cut (stage only) the metatiles holding the damaged files `damage` (scale_alibi.curate.damage.Damage) and
    replace each such file by its re-cut bytes when they hash to the manifest's sha256; the caller holds
    the release lock. Returns a line per file left damaged."""
    from scale_alibi.curate.search import SearchOptions

    wanted: dict[tuple, list] = {}
    for d in damage:
        wanted.setdefault(metatile_key(*d.triplet, params.metatile_levels), []).append(d)
    unplanned = [d for mt, ds in wanted.items() if mt not in metatiles for d in ds]
    todo = [mt for mt in metatiles if mt in wanted]
    # Whole blocks, as the build searched them: the same search bbox gives the same items.
    blocks = {b: mts for b, mts in search_blocks(metatiles).items() if any(mt in wanted for mt in mts)}
    opts = SearchOptions(datetime=params.datetime, max_cloud=params.max_cloud, naip_years=params.naip_years)
    echo(f"release {params.release}: re-cutting {len(todo)} metatiles for {len(damage)} damaged files")
    failures: list[str] = []
    shutil.rmtree(rel.path / ".build", ignore_errors=True)
    try:
        _run(rel, params, metatiles, todo, blocks, catalog, opts, signer, "synchronous", None, progress, echo,
             failures, commit=False)
        left = [f"{d.path}: its metatile is not in the plan the manifest records" for d in unplanned]
        left += failures
        moved = []
        for mt in todo:
            staging = rel.path / ".build" / "staging" / _mt_name(mt)
            for d in wanted[mt]:
                src = staging / d.path
                if not src.is_file():
                    if not any(f.startswith(f"metatile {_mt_name(mt)}:") for f in failures):
                        left.append(f"{d.path}: the re-cut no longer yields this triplet (the catalog changed?)")
                    continue
                if content_hash(src.read_bytes()) != d.digest:
                    left.append(f"{d.path}: re-cut bytes differ from the manifest (the catalog's scenes changed?)")
                    continue
                dst = rel.path / d.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.append(dst)
        fsync_paths(_dirs_up_to(moved, rel.path))
        return left
    finally:
        shutil.rmtree(rel.path / ".build", ignore_errors=True)


@dataclass
class BuildResult:
    """What a build produced."""

    release: Release
    triplets: int
    planned: int
    metatiles: int
    skipped_metatiles: int
    already_finished: bool = False
    seconds: float = 0.0


class _Lock:
    """An exclusive flock on OUT/<release>/.lock (released by the kernel if the build is killed)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)  # never a planted link
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise UserError(f"another build is writing release {self.path.parent.name} "
                            f"(lock {self.path}); wait for it or build another --release") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)


def _drop_damaged(rel: Release, records: dict, levels: int, echo: Callable[[str], None]) -> None:
    """Re-hash the committed files of done metatiles; forget (and re-cut) those with a damaged file."""
    from scale_alibi.curate.damage import find_damage

    damage = find_damage(rel, [row for r in records.values() for row in r["rows"]], deep=True)
    bad = sorted({metatile_key(*d.triplet, levels) for d in damage})
    if bad:
        echo(f"release {rel.name}: {len(damage)} files of {len(bad)} done metatiles are missing or damaged "
             f"(first: {damage[0].path}: {damage[0].problem}); cutting those metatiles again")
    for mt in bad:
        (rel.path / ".build" / "done" / f"{_mt_name(mt)}.json").unlink(missing_ok=True)
        del records[mt]


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror or e}); pass a writable --out") from None


def _clean_tmp(release_dir: Path, recorded: set[str]) -> None:
    """Remove what an interrupted build left: staging of unrecorded metatiles and temp files."""
    staging = _confined(release_dir / ".build" / "staging", release_dir.parent)
    if staging.exists():
        for d in staging.iterdir():
            if d.name not in recorded:
                shutil.rmtree(d, ignore_errors=True)
    for d in (release_dir, _confined(release_dir / ".build" / "done", release_dir.parent)):
        if d.exists():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)  # unlinks a planted symlink itself, never its target


def _versions() -> dict[str, str]:
    import dask
    import imagecodecs
    import pystac_client
    import rasterio

    from scale_alibi import __version__

    return {"scale-alibi": __version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
            "numpy": np.__version__, "imagecodecs": imagecodecs.__version__, "dask": dask.__version__,
            "pystac-client": pystac_client.__version__}


def _manifest_table(rows: list[dict]):
    import pyarrow as pa

    schema = dict(REQUIRED_COLUMNS)
    extra = {}
    for layer in ("s2", "s1", "naip"):
        extra[f"{layer}_group"] = pa.string()
        extra[f"{layer}_items"] = pa.list_(pa.string())
        extra[f"{layer}_datetime"] = pa.string()
        extra[f"{layer}_valid"] = pa.float64()
    extra["s2_cloud_cover"] = pa.float64()
    extra["s1_orbit_state"] = pa.string()
    extra["s1_relative_orbit"] = pa.int32()
    extra["naip_year"] = pa.string()
    schema.update(extra)
    s = pa.schema(list(schema.items()))
    return pa.Table.from_pylist(rows, schema=s)


def _params_meta(params: BuildParams) -> dict:
    d = asdict(params)
    d["naip_years"] = list(params.naip_years) if params.naip_years else None
    return d


def _check_options(max_cloud: float, naip_years, max_gap_days: float, min_valid: float, heldout_fraction: float,
                   metatile_levels: int, split_levels: int, workers: int | None, timeout_s: float) -> None:
    """Refuse option values that could only give an empty release, a traceback or a hang (NaN fails every test)."""
    if not 0 <= max_cloud <= 100:
        raise UserError(f"--max-cloud {max_cloud} must be a percentage in [0, 100]")
    if not max_gap_days >= 0:
        raise UserError(f"--max-gap-days {max_gap_days} must be a number of days >= 0")
    if not 0 < min_valid <= 1:
        raise UserError(f"--min-valid {min_valid} must be in (0, 1]")
    if not 0 <= heldout_fraction <= 1:
        raise UserError(f"--heldout-fraction {heldout_fraction} must be in [0, 1]")
    if naip_years and naip_years[0] > naip_years[1]:
        raise UserError(f"--naip-years {naip_years[0]}-{naip_years[1]} ends before it starts; give FIRST-LAST")
    for name, value in (("--metatile", metatile_levels), ("--split-levels", split_levels)):
        if not (isinstance(value, int) and value >= 0):
            raise UserError(f"{name} {value} must be a whole number of levels >= 0")
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise UserError(f"--workers {workers} must be at least 1")
    if not 0 < timeout_s < float("inf"):
        raise UserError(f"--timeout {timeout_s} must be a positive number of seconds")


def build_release(
    out: str | Path,
    zoom: int | None = None,
    region: Any = None,
    release: str | None = None,
    catalog: str | None = None,
    datetime: str | None = None,
    max_cloud: float = 20.0,
    naip_years: tuple[int, int] | None = None,
    max_gap_days: float = 730.0,
    min_valid: float = 0.99,
    metatile_levels: int = 3,
    heldout_fraction: float = 0.25,
    split_levels: int = 2,
    signer: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
    allow_empty: bool = False,
) -> BuildResult:
    """Build (or resume) a release under `out`; see the module docstring. Returns a BuildResult.

    `region`: a shapely geometry, a region name/path, or None with `release` naming a release of
    paper Table 1. `scheduler`: None (LocalCluster sized to the machine), "threads",
    "synchronous" (no Dask: this process, one thread) or a "tcp://host:port" scheduler address.
    `signer`: None (Planetary Computer), "none", "module:function", or a picklable callable.
    `timeout_s`: how long any one network call may wait for an answer (default scale_alibi.curate.search.TIMEOUT_S).
    `allow_empty`: seal a release with no complete triplet instead of refusing it."""
    from scale_alibi.curate.plan import check_zoom
    from scale_alibi.curate.search import PLANETARY_COMPUTER

    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s

    t0 = time.time()
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    catalog = catalog or PLANETARY_COMPUTER
    spec = None
    geometry = None
    if release is not None:
        check_release_name(release)
    if region is None:
        if not release:
            raise UserError("give --region (a name or GeoJSON file) or --release (a named release)")
        from scale_alibi.regions import load_release

        spec = load_release(release)
        zoom = spec.zoom if zoom is None else zoom
        region_label = f"release:{spec.name}"
    else:
        if zoom is None:
            raise UserError("--zoom is required with --region")
        if isinstance(region, (str, Path)):
            from scale_alibi.regions import load_region

            region_label = str(region)
            geometry = load_region(region)
        else:
            geometry = region
            region_label = f"geometry:{geometry.wkt if len(geometry.wkt) < 400 else hashlib.sha256(geometry.wkb).hexdigest()}"
        if not release:
            release = check_release_name(
                f"{Path(str(region)).stem if isinstance(region, (str, Path)) else 'region'}-z{zoom}")
    check_zoom(zoom)
    if zoom > MAX_BUILD_ZOOM:
        raise UserError(f"zoom {zoom} is too deep: NAIP is also cut at zoom + 1, so use 0-{MAX_BUILD_ZOOM}")
    _check_options(max_cloud=max_cloud, naip_years=naip_years, max_gap_days=max_gap_days, min_valid=min_valid,
                   heldout_fraction=heldout_fraction, metatile_levels=metatile_levels, split_levels=split_levels,
                   workers=workers, timeout_s=timeout_s)
    params = BuildParams(release=release, zoom=zoom, region=region_label, datetime=datetime, max_cloud=max_cloud,
                         naip_years=tuple(naip_years) if naip_years else None, max_gap_days=max_gap_days,
                         min_valid=min_valid, metatile_levels=metatile_levels, heldout_fraction=heldout_fraction,
                         split_levels=split_levels)
    if datetime:
        from scale_alibi.curate.search import parse_interval

        parse_interval(datetime)

    out = Path(out)
    _check_out(out)
    rel = Release(out, release)
    _confined(rel.path, out)
    rel.path.mkdir(parents=True, exist_ok=True)
    _confined(rel.path / ".build", out)
    with _Lock(rel.path / ".lock"):
        if rel.is_finished:
            meta = manifest_metadata(read_manifest(rel.manifest_path))
            if meta.get("params") != _params_meta(params):
                raise UserError(f"release {release} in {out} was built with other parameters; "
                                "choose another --release or remove it")
            shutil.rmtree(rel.path / ".build", ignore_errors=True)
            _clean_tmp(rel.path, set())
            table = read_manifest(rel.manifest_path)
            n = table.num_rows
            from scale_alibi.curate.damage import find_damage

            # Cheap: presence and the PNG end chunk (finds deleted and truncated files);
            # `curate verify` re-hashes everything.
            damage = find_damage(rel, table, deep=False, progress=progress)
            if not damage:
                echo(f"release {release} is already complete ({n} triplets): nothing to do")
                return BuildResult(rel, n, n, 0, 0, already_finished=True, seconds=time.time() - t0)
            echo(f"release {release} is complete but {len(damage)} files are missing or truncated "
                 f"(first: {damage[0].path}); re-cutting them")
            from scale_alibi.curate.search import open_catalog

            open_catalog(catalog)
            metatiles = group_metatiles(plan_tiles(params, geometry=geometry, spec=spec), zoom, metatile_levels)
            left = recut_files(rel, params, metatiles, damage, catalog, signer, progress, echo)
            if left:
                raise UserError(f"{len(left)} damaged files of release {release} could not be re-cut (first: "
                                f"{left[0]}); see `curate verify --data {out} --release {release}`")
            echo(f"release {release}: repaired {len(damage)} files; {n} triplets complete")
            return BuildResult(rel, n, n, 0, 0, already_finished=True, seconds=time.time() - t0)

        from scale_alibi.curate.search import open_catalog

        open_catalog(catalog, timeout_s)  # fail fast, with one line, before planning or starting any cluster
        tiles = plan_tiles(params, geometry=geometry, spec=spec)
        if not tiles:
            raise UserError("the region covers no tiles at this zoom")
        metatiles = group_metatiles(tiles, zoom, metatile_levels)

        done_dir = rel.path / ".build" / "done"
        done_dir.mkdir(parents=True, exist_ok=True)
        records: dict[tuple, dict] = {}
        for mt in metatiles:
            p = done_dir / f"{_mt_name(mt)}.json"
            if p.exists():
                records[mt] = json.loads(p.read_bytes())
                commit_staging(rel.path, mt, records[mt])  # finish moves a kill interrupted
        _drop_damaged(rel, records, metatile_levels, echo)
        _clean_tmp(rel.path, {_mt_name(mt) for mt in records})
        todo = [mt for mt in metatiles if mt not in records]
        echo(f"release {release}: {len(tiles)} tiles at z{zoom} in {len(metatiles)} metatiles "
             f"({len(records)} already done)")

        failures: list[str] = []
        items_by_block: dict = {}
        # Search even when every metatile is done: item `updated` times go in the manifest.
        if metatiles:
            from scale_alibi.curate.search import SearchOptions
            opts = SearchOptions(datetime=datetime, max_cloud=max_cloud, naip_years=params.naip_years)
            blocks = search_blocks(metatiles)
            # Nothing left to cut (a resumed build that had finished its metatiles): search here,
            # without starting a cluster.
            new_records, items_by_block = _run(rel, params, metatiles, todo, blocks, catalog, opts, signer,
                                               scheduler if todo else "synchronous", workers, progress, echo, failures,
                                               timeout_s)
            records.update(new_records)
        if failures:
            raise UserError(f"{len(failures)} of {len(metatiles)} metatiles failed after retries "
                            f"(first: {failures[0]}); rerun the same command to resume")

        rows = [row for mt in metatiles for row in records[mt]["rows"]]
        if not rows and not allow_empty:
            raise UserError(f"no tile of release {release} has a complete triplet: "
                            f"{_empty_cause(items_by_block, params)}; pass --allow-empty to seal an empty release anyway")
        used = {i for row in rows for layer in ("s1", "s2", "naip") for i in row[f"{layer}_items"]}
        items_meta = {}
        for items in items_by_block.values():
            for it in items:
                if it["id"] in used:
                    items_meta[it["id"]] = {"collection": it["collection"], "datetime": it["datetime"],
                                            "updated": it.get("updated")}
        from scale_alibi.curate.encode import PNG_LEVEL, S1_VH_DB, S1_VV_DB

        metadata = {
            "release": release, "zoom": zoom, "params": _params_meta(params), "catalog": catalog,
            "software": _versions(), "items": dict(sorted(items_meta.items())),
            "encoding": {"s1_vv_db": list(S1_VV_DB), "s1_vh_db": list(S1_VH_DB), "png_level": PNG_LEVEL},
            "planned_tiles": len(tiles),
        }
        try:
            write_manifest(_manifest_table(rows), rel.manifest_path, metadata)
        except OSError as e:  # disk full, quota, read-only: no manifest is left half-written
            raise UserError(f"cannot write {rel.manifest_path} ({e.strerror or e}); free space under {out} and "
                            "rerun the same command: finished metatiles are kept, not cut again") from None
        shutil.rmtree(rel.path / ".build", ignore_errors=True)
        _clean_tmp(rel.path, set())
    dt = time.time() - t0
    echo(f"release {release}: {len(rows)} complete triplets of {len(tiles)} planned tiles in {dt:.1f}s -> {rel.path}")
    return BuildResult(rel, len(rows), len(tiles), len(metatiles), len(metatiles) - len(todo), seconds=dt)


def _empty_cause(items_by_block: dict, params: BuildParams) -> str:
    """The likely reason a build found no complete triplet, from what its searches returned."""
    found = {layer: 0 for layer in LAYERS}
    for items in items_by_block.values():
        for it in items:
            found[it["layer"]] += 1
    missing = [layer for layer in LAYERS if not found[layer]]
    if len(missing) == len(LAYERS):
        window = f" in --datetime {params.datetime}" if params.datetime else ""
        return f"the catalog has no scenes over the region{window} (is the region outside the catalog's coverage?)"
    if missing:
        return (f"no {'/'.join(missing)} scenes over the region pass the filters (--datetime {params.datetime or 'any'}, "
                f"--max-cloud {params.max_cloud:g}, --naip-years {params.naip_years or 'any'})")
    return (f"scenes were found ({', '.join(f'{n} {layer}' for layer, n in found.items())}) but none combine into a "
            f"tile within --max-gap-days {params.max_gap_days:g} and --min-valid {params.min_valid:g}")


def _faults(on_dask: bool) -> tuple[type[BaseException], ...]:
    """What a metatile may fail with and still be resumed by a rerun: a scene that kept failing to
    read (or, on Dask, a worker that died). UserError (bad input, access denied) stops the build;
    anything else is a bug in this program and is raised as it is, never reported as a fault to retry."""
    from rasterio.errors import RasterioIOError

    from scale_alibi.curate.reader import TransientError

    if on_dask:
        from distributed import KilledWorker

        return TransientError, RasterioIOError, OSError, KilledWorker
    return TransientError, RasterioIOError, OSError


def _search_block(catalog: str, layer: str, bbox, opts, timeout_s: float) -> list:
    from scale_alibi.curate.search import search_items

    return search_items(catalog, layer, bbox, opts, timeout_s)


def _run(rel, params, metatiles, todo, blocks, catalog, opts, signer, scheduler, workers, progress, echo, failures,
         timeout_s: float = TIMEOUT_S, commit: bool = True):
    """Execute the graph (search tasks -> metatile tasks) on the chosen scheduler (`commit`: see MetatileJob)."""
    from tqdm import tqdm

    block_of = {mt: b for b, mts in blocks.items() for mt in mts}
    block_bbox = {b: lonlat_bounds(params.zoom, [t[:2] for mt in mts for t in metatiles[mt]]) for b, mts in blocks.items()}
    jobs = {mt: MetatileJob(str(rel.path), params.zoom, mt, metatiles[mt], params.min_valid, params.max_gap_days,
                            signer=signer, catalog=catalog, timeout_s=timeout_s, commit=commit) for mt in todo}
    records: dict = {}
    faults = _faults(on_dask=scheduler != "synchronous")

    def new_bar():
        return tqdm(total=len(todo), unit="metatile", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    if scheduler == "synchronous":
        bar = new_bar()
        from scale_alibi.curate.search import search_items

        items = {(b, layer): search_items(catalog, layer, block_bbox[b], opts, timeout_s)
                 for b in blocks for layer in LAYERS}
        for mt in todo:
            b = block_of[mt]
            try:
                records[mt] = cut_metatile(jobs[mt], items[(b, "s2")], items[(b, "s1")], items[(b, "naip")])
            except faults as e:  # a scene kept failing: report, keep going, resume on rerun
                failures.append(f"metatile {_mt_name(mt)}: {str(e)[:200]}")
            bar.update(1)
        bar.close()
        return records, {b: items[(b, "s2")] + items[(b, "s1")] + items[(b, "naip")] for b in blocks}

    from dask.distributed import Client, LocalCluster, as_completed

    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # `curate -v` keeps Dask's own log lines
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                     "distributed.worker", "distributed.http.proxy"):
            logging.getLogger(name).setLevel(logging.WARNING)

    cluster = None
    if scheduler and scheduler.startswith(("tcp://", "tls://", "ucx://")):
        try:
            client = Client(scheduler, timeout="10s")
        except Exception as e:
            raise UserError(f"cannot connect to Dask scheduler {scheduler} ({str(e)[:120]}); start one with "
                            "`dask scheduler` or omit --scheduler") from None
    else:
        n = workers or os.cpu_count() or 1
        if scheduler == "threads":
            cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False, dashboard_address=":0")
        elif scheduler in (None, "local", "processes"):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        else:
            raise UserError(f"unknown --scheduler {scheduler!r}; use local, threads, synchronous or tcp://HOST:PORT")
        client = Client(cluster)
    try:
        link = client.dashboard_link
        echo(f"dask dashboard: {link}" + ("" if _has_bokeh() else " (pip install bokeh to enable it)"))
        bar = new_bar()
        search_f = {(b, layer): client.submit(_search_block, catalog, layer, block_bbox[b], opts, timeout_s, pure=False,
                                              key=f"search-{layer}-{b.z}-{b.x}-{b.y}-{time.time_ns()}")
                    for b in blocks for layer in LAYERS}
        futures = {}
        for mt in todo:
            b = block_of[mt]
            f = client.submit(cut_metatile, jobs[mt], search_f[(b, "s2")], search_f[(b, "s1")], search_f[(b, "naip")],
                              pure=False, key=f"metatile-{_mt_name(mt)}-{time.time_ns()}")
            futures[f] = mt
        for f in as_completed(list(futures)):
            mt = futures[f]
            try:
                records[mt] = f.result()
            except faults as e:
                failures.append(f"metatile {_mt_name(mt)}: {str(e)[:200]}")
            bar.update(1)
        bar.close()
        items = {}
        for (b, _layer), f in search_f.items():
            try:
                items.setdefault(b, []).extend(f.result())
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"STAC search failed ({str(e)[:160]})") from None
        return records, items
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401

        return True
    except ImportError:
        return False
