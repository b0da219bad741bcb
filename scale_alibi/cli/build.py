"""`curate build`: the command line of scale_alibi.curate.pipeline.build_release."""

from __future__ import annotations

import math

import click

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.pipeline.params import BuildParams
from scale_alibi.curate.pipeline.request import RunOptions
from scale_alibi.curate.plan import MAX_TILES


def _years(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        parts = [int(v) for v in value.split("-", 1)] if "-" in value else [int(value)] * 2
    except ValueError:
        raise UserError(f"--naip-years {value!r} must be YEAR or FIRST-LAST, e.g. 2020-2022") from None
    return parts[0], parts[1]


def _bbox(value: str | None):
    if not value:
        return None
    from shapely.geometry import box

    try:
        w, s, e, n = (float(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--bbox {value!r} must be W,S,E,N in degrees") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise UserError(f"--bbox {value!r} has a coordinate that is not a finite number; give W,S,E,N in degrees")
    if not (w < e and s < n):
        raise UserError(f"--bbox {value!r} must have W < E and S < N")
    return box(w, s, e, n)


@click.command("build")
@click.option("--region", help="Region: a name (conus, puerto-rico) or a GeoJSON file. Omit to build a named --release.")
@click.option("--bbox", help="Region as W,S,E,N degrees (instead of --region).")
@click.option("--zoom", type=int, help="Tile zoom Y, 0-21 (NAIP is also cut at Y+1). A named release has its own "
              "zoom: omit it there.")
@click.option("--release", help="Release name: a release of paper Table 1 when no region is given (e.g. small), "
              "else the output subfolder.  [default: <region>-z<zoom>]")
@click.option("--out", default="data", show_default=True,
              help="Data root: a directory, or an object-store URL such as s3://bucket/prefix (pip install "
                   "'scale-alibi[s3]'; credentials and endpoint from the AWS_* variables).")
@click.option("--catalog", default="https://planetarycomputer.microsoft.com/api/stac/v1", show_default=True,
              help="STAC API URL.")
@click.option("--datetime", "datetime_", help="STAC interval of S1/S2 scene dates, e.g. 2022-01-01/2022-12-31 (NAIP: --naip-years).  [default: any]")
@click.option("--max-cloud", default=BuildParams.max_cloud, show_default=True, help="S2 eo:cloud_cover upper limit (percent).")
@click.option("--naip-years", help="NAIP years, YEAR or FIRST-LAST (newest preferred).  [default: any]")
@click.option("--max-gap-days", default=BuildParams.max_gap_days, show_default=True,
              help="Largest S1/S2 time gap to the tile's NAIP capture (closest is taken first).")
@click.option("--min-valid", default=BuildParams.min_valid, show_default=True,
              help="Fraction of a tile's pixels that must be valid (data, not cloud) in each layer.")
@click.option("--metatile", "metatile_levels", default=BuildParams.metatile_levels, show_default=True, type=click.IntRange(min=0),
              help="Metatile = ancestor this many levels up (3 -> 8x8 tiles warped at once).")
@click.option("--heldout-fraction", default=BuildParams.heldout_fraction, show_default=True,
              help="Region builds: fraction of spatial blocks held out.")
@click.option("--split-levels", default=BuildParams.split_levels, show_default=True, type=click.IntRange(min=0),
              help="Region builds: split blocks are ancestors this many levels up (2 -> 4x4 tiles).")
@click.option("--signer", default="planetary-computer", show_default=True,
              help="Href signer: planetary-computer, none, or module:function.")
@click.option("--scheduler", default=None,
              help="Dask: tcp://HOST:PORT of a running scheduler, or local, threads, synchronous.  [default: local "
              "cluster, one single-threaded worker process per core]")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local cluster workers.  [default: number of cores]")
@click.option("--timeout", "timeout_s", default=RunOptions.timeout_s, show_default=True,
              help="Seconds any one network call (catalog request, COG read) may wait for data before it is retried.")
@click.option("--search-concurrency", default=RunOptions.search_concurrency, show_default=True, type=click.IntRange(min=1),
              help="Catalog searches running at once, whatever the cluster's size.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=MAX_TILES, show_default=True,
              help="Refuse an area that covers more tiles than this (the plan is held in memory).")
@click.option("--allow-empty", is_flag=True, help="Seal a release even when no tile has a complete triplet.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def build(region, bbox, zoom, release, out, catalog, datetime_, max_cloud, naip_years, max_gap_days, min_valid,
          metatile_levels, heldout_fraction, split_levels, signer, scheduler, workers, timeout_s, search_concurrency,
          max_tiles, allow_empty, progress) -> None:
    """Build aligned s1/s2/naip XYZ triplets of a region (or a named release) from a STAC catalog.

    Writes OUT/RELEASE/<layer>/<z>/<x>/<y>.png and OUT/RELEASE/manifest.parquet (last). Rerunning
    resumes where an interrupted build stopped."""
    from scale_alibi.curate.pipeline import build_release, resolve_request

    if region and bbox:
        raise UserError("give either --region or --bbox, not both")
    geometry = _bbox(bbox) if bbox else region
    if bbox and not release and zoom is not None:
        release = f"bbox-z{zoom}"
    # Resolved and checked here, once (zoom included), before any output, catalog or cluster is touched.
    request = resolve_request(
        region=geometry, release=release, zoom=zoom, catalog=catalog, datetime=datetime_, max_cloud=max_cloud,
        naip_years=_years(naip_years), max_gap_days=max_gap_days, min_valid=min_valid,
        metatile_levels=metatile_levels, heldout_fraction=heldout_fraction, split_levels=split_levels,
        max_tiles=max_tiles,
    )
    run = RunOptions(signer=signer, scheduler=scheduler, workers=workers, timeout_s=timeout_s, allow_empty=allow_empty,
                     search_concurrency=search_concurrency, progress=progress, echo=lambda m: click.echo(m, err=True))
    result = build_release(out, request, run)
    click.echo(result.location)
