"""`build_release`: lock the release a BuildRequest names, resume or repair it, run the graph, write the
manifest last."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import mercantile

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import LAYERS, MANIFEST_NAME, manifest_metadata
from scale_alibi.contract.storage import StoreTimeouts
from scale_alibi.curate.pipeline.executor import run_graph, search_blocks
from scale_alibi.curate.pipeline.local_cluster import LOCAL_PROCESS_SCHEDULERS, start_worker_forkserver
from scale_alibi.curate.pipeline.manifest import manifest_batches, manifest_columns, params_metadata, software_versions
from scale_alibi.curate.pipeline.open_output import open_output
from scale_alibi.curate.pipeline.output import ReleaseOutput
from scale_alibi.curate.pipeline.params import BuildParams
from scale_alibi.curate.pipeline.repair import repair_finished, resume_done
from scale_alibi.curate.pipeline.request import BuildRequest, RunOptions
from scale_alibi.curate.pipeline.tiling import group_metatiles, lonlat_bounds, metatile_name


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


def build_release(out: str | Path, request: BuildRequest, run: RunOptions | None = None) -> BuildResult:
    """Build (or resume, or repair) the release `request` (resolve_request: checked already) under the
    data root `out` (a directory or an object-store URL), run as `run` says. Returns a BuildResult."""
    run = run or RunOptions()
    t0 = time.time()
    echo = run.echo
    params, release, zoom = request.params, request.release, request.zoom

    output = open_output(out, release, StoreTimeouts.waiting(run.timeout_s))  # --timeout bounds store calls too
    output.check_writable()
    with output.lock():
        if output.is_finished():
            table = _read_manifest(output)
            if manifest_metadata(table).get("params") != params_metadata(params):
                raise UserError(f"release {release} in {out} was built with other parameters; "
                                "choose another --release or remove it")
            output.finish()
            output.clean(set())
            n = table.num_rows
            if not repair_finished(output, request, table, run, str(out)):
                echo(f"release {release} is already complete ({n} triplets): nothing to do")
            return BuildResult(output.location, n, n, 0, 0, already_finished=True, seconds=time.time() - t0)

        if run.scheduler in LOCAL_PROCESS_SCHEDULERS:  # its imports run while the catalog is opened and the region planned
            start_worker_forkserver()
        from scale_alibi.curate.search import open_catalog

        client = open_catalog(request.catalog, run.timeout_s)  # fail fast, with one line, before planning or starting any cluster
        tiles = request.plan()
        if not tiles:
            raise UserError("the region covers no tiles at this zoom")
        metatiles = group_metatiles(tiles, params.metatile_levels)

        done = resume_done(output, [mt for mt in output.done_metatiles() if mt in metatiles], run)
        output.clean({metatile_name(mt) for mt in done})
        todo = [mt for mt in metatiles if mt not in done]
        echo(f"release {release}: {len(tiles)} tiles at z{zoom} in {len(metatiles)} metatiles "
             f"({len(done)} already done)")
        if todo:  # a refused token (no or a wrong subscription key) is one line now, before any metatile
            _check_access(client, request, tiles, run)

        failures: list[str] = []
        items_by_block: dict = {}
        # Search even when every metatile is done: item `updated` times go in the manifest.
        if metatiles:
            # Nothing left to cut (a resumed build that had finished its metatiles): search here,
            # without starting a cluster.
            cut, items_by_block = run_graph(output, request, metatiles, todo, search_blocks(metatiles),
                                            run if todo else replace(run, scheduler="synchronous"), failures)
            done.update(cut)
        if failures:
            raise UserError(f"{len(failures)} of {len(metatiles)} metatiles failed after retries "
                            f"(first: {failures[0]}); rerun the same command to resume")

        triplets = sum(summary.rows for summary in done.values())
        if not triplets and not run.allow_empty:
            raise UserError(f"no tile of release {release} has a complete triplet: "
                            f"{_empty_cause(items_by_block, params)}; pass --allow-empty to seal an empty release anyway")
        used = set().union(*(summary.items for summary in done.values()))
        items_meta = {}
        for items in items_by_block.values():
            for it in items:
                if it["id"] in used:
                    items_meta[it["id"]] = {"collection": it["collection"], "datetime": it["datetime"],
                                            "updated": it.get("updated")}
        from scale_alibi.curate.encode import PNG_ENCODER, PNG_LEVEL, S1_VH_DB, S1_VV_DB

        metadata = {
            "release": release, "zoom": zoom, "params": params_metadata(params), "catalog": request.catalog,
            "software": software_versions(), "items": dict(sorted(items_meta.items())),
            "encoding": {"s1_vv_db": list(S1_VV_DB), "s1_vh_db": list(S1_VH_DB), "png_level": PNG_LEVEL,
                         "png_encoder": PNG_ENCODER},
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


def _check_access(client, request: BuildRequest, tiles: Iterable[mercantile.Tile], run: RunOptions) -> None:
    """Sign one href of each collection over the build's tiles with Planetary Computer's token service (see
    scale_alibi.curate.access.check_access); another signer (none, module:function) is only called lazily."""
    from scale_alibi.curate.access import PlanetaryComputerSigner, check_access
    from scale_alibi.curate.search import SENSORS, network_reason, resolve_signer

    sign = resolve_signer(run.signer)
    if not isinstance(sign, PlanetaryComputerSigner):
        return
    try:
        check_access(client, [(s.collection, s.assets) for s in SENSORS.values()], lonlat_bounds(tiles), sign)
    except UserError:
        raise
    except Exception as e:  # pystac_client flattens network errors to text
        raise UserError(f"STAC search at {request.catalog} failed ({network_reason(e, run.timeout_s)}); check the "
                        "catalog, or rerun later") from None


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
