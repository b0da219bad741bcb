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

from scale_alibi.curate.build.driver import BuildResult, build_release
from scale_alibi.curate.build.executor import search_blocks
from scale_alibi.curate.build.metatile import MetatileJob, cut_metatile, group_metatiles, lonlat_bounds, metatile_key
from scale_alibi.curate.build.params import BuildParams, plan_tiles, split_of
from scale_alibi.curate.build.repair import recut_files
from scale_alibi.curate.build.staging import _Lock, commit_staging

__all__ = [
    "BuildParams",
    "BuildResult",
    "MetatileJob",
    "_Lock",
    "build_release",
    "commit_staging",
    "cut_metatile",
    "group_metatiles",
    "lonlat_bounds",
    "metatile_key",
    "plan_tiles",
    "recut_files",
    "search_blocks",
    "split_of",
]
