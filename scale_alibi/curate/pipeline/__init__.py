"""`curate build`: STAC scenes to aligned XYZ triplets, as a Dask graph of pure functions.

Entry: ``build_release(out, resolve_request(...), RunOptions(...))``; the request (what to build) is
resolved and checked once, and tiles travel as ``mercantile.Tile`` from the plan to the rename.

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

from scale_alibi.curate.pipeline.driver import BuildResult, build_release
from scale_alibi.curate.pipeline.executor import search_blocks
from scale_alibi.curate.pipeline.metatile import MetatileJob, cut_metatile
from scale_alibi.curate.pipeline.params import BuildParams, split_of
from scale_alibi.curate.pipeline.repair import Damage, find_damage, recut_files, repair
from scale_alibi.curate.pipeline.request import BuildRequest, RunOptions, recorded_request, resolve_request
from scale_alibi.curate.pipeline.staging import ReleaseLock, commit_staging
from scale_alibi.curate.pipeline.tiling import Metatile, group_metatiles, lonlat_bounds, metatile_name, metatile_of

__all__ = [
    "BuildParams",
    "BuildRequest",
    "BuildResult",
    "Damage",
    "Metatile",
    "MetatileJob",
    "ReleaseLock",
    "RunOptions",
    "build_release",
    "commit_staging",
    "cut_metatile",
    "find_damage",
    "group_metatiles",
    "lonlat_bounds",
    "metatile_name",
    "metatile_of",
    "recorded_request",
    "recut_files",
    "repair",
    "resolve_request",
    "search_blocks",
    "split_of",
]
