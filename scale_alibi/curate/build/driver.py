"""`build_release`: check the options, lock the release, resume or repair it, run the graph, write the
manifest last."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import (
    LAYERS,
    MANIFEST_NAME,
    check_release_name,
    manifest_metadata,
)
from scale_alibi.contract.storage import StoreTimeouts
from scale_alibi.curate.build.executor import _run, search_blocks
from scale_alibi.curate.build.manifest import _params_meta, _versions, manifest_batches, manifest_columns
from scale_alibi.curate.build.metatile import group_metatiles
from scale_alibi.curate.build.open_output import open_output
from scale_alibi.curate.build.output import ReleaseOutput
from scale_alibi.curate.build.params import MAX_BUILD_ZOOM, BuildParams, _check_options, plan_tiles
from scale_alibi.curate.build.repair import recut_files, resume_done
from scale_alibi.curate.build.staging import _mt_name
from scale_alibi.curate.search import TIMEOUT_S


@dataclass
class BuildResult:
    """What a build produced."""

    location: str  # the release's directory or URL
    triplets: int
    planned: int
    metatiles: int
    skipped_metatiles: int
    already_finished: bool = False
    seconds: float = 0.0


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
    search_concurrency: int = 4,
    max_tiles: int | None = None,
) -> BuildResult:
    """Build (or resume) a release under `out`; see the module docstring. Returns a BuildResult.

    `region`: a shapely geometry, a region name/path, or None with `release` naming a release of
    paper Table 1. `scheduler`: None (LocalCluster sized to the machine), "threads",
    "synchronous" (no Dask: this process, one thread) or a "tcp://host:port" scheduler address.
    `signer`: None (Planetary Computer), "none", "module:function", or a picklable callable.
    `timeout_s`: how long any one network call may wait for an answer (default scale_alibi.curate.search.TIMEOUT_S).
    `allow_empty`: seal a release with no complete triplet instead of refusing it.
    `search_concurrency`: catalog searches running at once (on any cluster).
    `max_tiles`: refuse a plan of more tiles (default scale_alibi.curate.plan.MAX_TILES)."""
    from scale_alibi.curate.plan import MAX_TILES, check_plan_size, check_zoom
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
                         naip_years=(naip_years[0], naip_years[1]) if naip_years else None, max_gap_days=max_gap_days,
                         min_valid=min_valid, metatile_levels=metatile_levels, heldout_fraction=heldout_fraction,
                         split_levels=split_levels)
    if datetime:
        from scale_alibi.curate.search import parse_interval

        parse_interval(datetime)
    # Before anything is written: the plan is held in memory, tile by tile.
    check_plan_size(geometry, spec, zoom, MAX_TILES if max_tiles is None else max_tiles,
                    f"release {spec.name}" if spec is not None else "the region")

    output = open_output(out, release, StoreTimeouts.waiting(timeout_s))  # --timeout bounds store calls too
    output.check_writable()
    with output.lock():
        if output.is_finished():
            table = _read_manifest(output)
            if manifest_metadata(table).get("params") != _params_meta(params):
                raise UserError(f"release {release} in {out} was built with other parameters; "
                                "choose another --release or remove it")
            output.finish()
            output.clean(set())
            n = table.num_rows
            from scale_alibi.curate.damage import find_damage

            # Cheap: presence and the PNG end chunk (finds deleted and truncated files);
            # `curate verify` re-hashes everything.
            damage = find_damage(output, table, deep=False, progress=progress)
            if not damage:
                echo(f"release {release} is already complete ({n} triplets): nothing to do")
                return BuildResult(output.location, n, n, 0, 0, already_finished=True, seconds=time.time() - t0)
            echo(f"release {release} is complete but {len(damage)} files are missing or truncated "
                 f"(first: {damage[0].path}); re-cutting them")
            from scale_alibi.curate.search import open_catalog

            open_catalog(catalog)
            metatiles = group_metatiles(plan_tiles(params, geometry=geometry, spec=spec), zoom, metatile_levels)
            left = recut_files(output, params, metatiles, damage, catalog, signer, progress, echo)
            if left:
                raise UserError(f"{len(left)} damaged files of release {release} could not be re-cut (first: "
                                f"{left[0]}); see `curate verify --data {out} --release {release}`")
            echo(f"release {release}: repaired {len(damage)} files; {n} triplets complete")
            return BuildResult(output.location, n, n, 0, 0, already_finished=True, seconds=time.time() - t0)

        from scale_alibi.curate.search import open_catalog

        client = open_catalog(catalog, timeout_s)  # fail fast, with one line, before planning or starting any cluster
        tiles = plan_tiles(params, geometry=geometry, spec=spec)
        if not tiles:
            raise UserError("the region covers no tiles at this zoom")
        metatiles = group_metatiles(tiles, zoom, metatile_levels)

        done = resume_done(output, [mt for mt in output.done_metatiles() if mt in metatiles], metatile_levels, echo)
        output.clean({_mt_name(mt) for mt in done})
        todo = [mt for mt in metatiles if mt not in done]
        echo(f"release {release}: {len(tiles)} tiles at z{zoom} in {len(metatiles)} metatiles "
             f"({len(done)} already done)")
        if todo:  # a refused token (no or a wrong subscription key) is one line now, before any metatile
            _check_access(client, catalog, tiles, zoom, signer, timeout_s)

        failures: list[str] = []
        items_by_block: dict = {}
        # Search even when every metatile is done: item `updated` times go in the manifest.
        if metatiles:
            from scale_alibi.curate.search import SearchOptions
            if not (isinstance(search_concurrency, int) and search_concurrency >= 1):
                raise UserError(f"--search-concurrency {search_concurrency} must be a whole number >= 1")
            opts = SearchOptions(datetime=datetime, max_cloud=max_cloud, naip_years=params.naip_years,
                                 max_gap_days=max_gap_days, concurrency=search_concurrency)
            blocks = search_blocks(metatiles)
            # Nothing left to cut (a resumed build that had finished its metatiles): search here,
            # without starting a cluster.
            cut, items_by_block = _run(output, params, metatiles, todo, blocks, catalog, opts, signer,
                                       scheduler if todo else "synchronous", workers, progress, echo, failures,
                                       timeout_s)
            done.update(cut)
        if failures:
            raise UserError(f"{len(failures)} of {len(metatiles)} metatiles failed after retries "
                            f"(first: {failures[0]}); rerun the same command to resume")

        triplets = sum(summary.rows for summary in done.values())
        if not triplets and not allow_empty:
            raise UserError(f"no tile of release {release} has a complete triplet: "
                            f"{_empty_cause(items_by_block, params)}; pass --allow-empty to seal an empty release anyway")
        used = set().union(*(summary.items for summary in done.values()))
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
            output.write_manifest(manifest_batches(output, [mt for mt in metatiles if done[mt].rows]),
                                  manifest_columns(), metadata)
        except OSError as e:  # disk full, quota, read-only: no manifest is left half-written
            raise UserError(f"cannot write {output.location}/{MANIFEST_NAME} ({e.strerror or e}); free space "
                            f"under {out} and rerun the same command: finished metatiles are kept, not cut "
                            "again") from None
        output.finish()
        output.clean(set())
    dt = time.time() - t0
    echo(f"release {release}: {triplets} complete triplets of {len(tiles)} planned tiles in {dt:.1f}s -> "
         f"{output.location}")
    return BuildResult(output.location, triplets, len(tiles), len(metatiles), len(metatiles) - len(todo), seconds=dt)


def _check_access(client, catalog: str, tiles, zoom: int, signer, timeout_s: float) -> None:
    """Sign one href of each collection over the build's tiles with Planetary Computer's token service (see
    scale_alibi.curate.access.check_access); another signer (none, module:function) is only called lazily."""
    from scale_alibi.curate.access import PlanetaryComputerSigner, check_access
    from scale_alibi.curate.build.metatile import lonlat_bounds
    from scale_alibi.curate.search import SENSORS, network_reason, resolve_signer

    sign = resolve_signer(signer)
    if not isinstance(sign, PlanetaryComputerSigner):
        return
    try:
        check_access(client, [(s.collection, s.assets) for s in SENSORS.values()], lonlat_bounds(zoom, tiles), sign)
    except UserError:
        raise
    except Exception as e:  # pystac_client flattens network errors to text
        raise UserError(f"STAC search at {catalog} failed ({network_reason(e, timeout_s)}); check the catalog, or "
                        "rerun later") from None


def _read_manifest(output: ReleaseOutput):
    try:
        return output.read_manifest()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"the manifest of release {output.name} at {output.location} is unreadable "
                        f"({str(e)[:120]}); remove the release and build it again") from None


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
