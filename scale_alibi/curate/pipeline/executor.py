"""Running the graph: one search task per SEARCH_ZOOM block and layer feeding the metatile tasks, in this
process or on a Dask cluster."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable

import mercantile

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.pipeline.local_cluster import start_local_cluster
from scale_alibi.curate.pipeline.manifest import MetatileSummary, summarize
from scale_alibi.curate.pipeline.metatile import MetatileJob, cut_metatile
from scale_alibi.curate.pipeline.output import ReleaseOutput
from scale_alibi.curate.pipeline.request import BuildRequest, RunOptions
from scale_alibi.curate.pipeline.tiling import Metatile, lonlat_bounds, metatile_name
from scale_alibi.curate.scene import Scene, format_time

SEARCH_ZOOM = 9  # one STAC search per layer per z9 block (~78 km): bounded result pages anywhere


def search_blocks(metatiles: Iterable[Metatile]) -> dict[mercantile.Tile, list[Metatile]]:
    """Metatiles grouped by the SEARCH_ZOOM block whose STAC searches feed them (one task per block and layer)."""
    blocks: dict[mercantile.Tile, list[Metatile]] = {}
    for mt in metatiles:
        blocks.setdefault(mercantile.parent(mt, zoom=SEARCH_ZOOM) if mt.z > SEARCH_ZOOM else mt, []).append(mt)
    return blocks


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


def _item_meta(item: Scene) -> dict:
    """What the driver keeps of a searched item: what the manifest records and what explains an empty build."""
    return {"id": item.id, "collection": item.collection, "datetime": format_time(item.datetime),
            "updated": item.updated, "layer": item.layer}


def _search_block(catalog: str, layer: str, bbox, opts, timeout_s: float, gate, naip: list | None = None) -> list:
    """One block's search of `layer` on a worker, while holding one of the build's `gate` leases (a Dask
    Semaphore of opts.concurrency): a cluster of any size sends the catalog a few searches at a time."""
    from scale_alibi.curate.search import search_items

    with gate:
        return search_items(catalog, layer, bbox, opts, timeout_s, naip=naip)


def run_graph(output: ReleaseOutput, request: BuildRequest, metatiles: dict[Metatile, list], todo: list[Metatile],
              blocks: dict[mercantile.Tile, list[Metatile]], run: RunOptions, failures: list[str],
              commit: bool = True) -> tuple[dict[Metatile, MetatileSummary], dict[mercantile.Tile, list[dict]]]:
    """Execute the graph (search tasks over `blocks` -> metatile tasks for `todo`) on `run.scheduler`
    (`commit`: see MetatileJob); a metatile that fails with a fault a rerun may resume is appended to
    `failures`. Returns ({metatile: MetatileSummary} of the metatiles cut, {search block: items found
    (_item_meta)})."""
    from tqdm import tqdm

    params, catalog, opts = request.params, request.catalog, request.search_options(run.search_concurrency)
    scheduler, timeout_s, echo = run.scheduler, run.timeout_s, run.echo
    block_of = {mt: b for b, mts in blocks.items() for mt in mts}
    block_bbox = {b: lonlat_bounds(t for mt in mts for t, _ in metatiles[mt]) for b, mts in blocks.items()}
    jobs = {mt: MetatileJob(output, mt, metatiles[mt], params.min_valid, params.max_gap_days,
                            signer=run.signer, catalog=catalog, timeout_s=timeout_s, commit=commit) for mt in todo}
    records: dict[Metatile, MetatileSummary] = {}
    faults = _faults(on_dask=scheduler != "synchronous")

    def new_bar():
        return tqdm(total=len(todo), unit="metatile", disable=not run.progress, file=sys.stderr, dynamic_ncols=True)

    if scheduler == "synchronous":
        bar = new_bar()
        from scale_alibi.curate.search import search_items

        items: dict = {}
        for b in blocks:  # NAIP first: it bounds the S1/S2 searches in time
            items[(b, "naip")] = search_items(catalog, "naip", block_bbox[b], opts, timeout_s)
            for layer in ("s1", "s2"):
                items[(b, layer)] = search_items(catalog, layer, block_bbox[b], opts, timeout_s, naip=items[(b, "naip")])
        for mt in todo:
            b = block_of[mt]
            try:
                records[mt] = summarize(cut_metatile(jobs[mt], items[(b, "s2")], items[(b, "s1")], items[(b, "naip")]))
            except faults as e:  # a scene kept failing: report, keep going, resume on rerun
                failures.append(f"metatile {metatile_name(mt)}: {str(e)[:200]}")
            bar.update(1)
        bar.close()
        return records, {b: [_item_meta(it) for layer in ("s2", "s1", "naip") for it in items[(b, layer)]]
                         for b in blocks}

    from dask.distributed import Client, as_completed

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
        cluster = start_local_cluster(scheduler, run.workers or os.cpu_count() or 1)
        client = Client(cluster)
    try:
        link = client.dashboard_link
        echo(f"dask dashboard: {link}" + ("" if _has_bokeh() else " (pip install bokeh to enable it)"))
        bar = new_bar()
        from distributed import Semaphore

        gate = Semaphore(max_leases=opts.concurrency, name=f"catalog-searches-{time.time_ns()}")
        search_f: dict = {}
        for b in blocks:  # NAIP first: its result bounds the block's S1/S2 searches in time
            for layer in ("naip", "s1", "s2"):
                naip = search_f[(b, "naip")] if layer != "naip" else None
                search_f[(b, layer)] = client.submit(_search_block, catalog, layer, block_bbox[b], opts, timeout_s, gate,
                                                     naip, pure=False, key=f"search-{layer}-{b.z}-{b.x}-{b.y}-{time.time_ns()}")
        futures = {}
        for mt in todo:
            b = block_of[mt]
            # Larger metatiles first: the last tasks to start are the short ones, so workers finish together.
            f = client.submit(cut_metatile, jobs[mt], search_f[(b, "s2")], search_f[(b, "s1")], search_f[(b, "naip")],
                              pure=False, key=f"metatile-{metatile_name(mt)}-{time.time_ns()}",
                              priority=len(metatiles[mt]))
            futures[f] = mt
        for f in as_completed(list(futures)):
            mt = futures[f]
            try:
                records[mt] = summarize(f.result())
            except faults as e:
                failures.append(f"metatile {metatile_name(mt)}: {str(e)[:200]}")
            # Released at once: were the worker holding this result lost later, Dask would otherwise
            # run the task again to recompute it, and that run could write after the manifest.
            f.release()
            bar.update(1)
        bar.close()
        found: dict[mercantile.Tile, list[dict]] = {}
        for (b, _layer), search in search_f.items():
            try:
                found.setdefault(b, []).extend(_item_meta(it) for it in search.result())
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"STAC search failed ({str(e)[:160]})") from None
        return records, found
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
