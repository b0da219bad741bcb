"""`curate plan`: the tiles a release or region covers (offline), optionally the scenes and bytes to fetch."""

from __future__ import annotations

import json

import click

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.plan import MAX_TILES, plan_region, plan_release, scene_summary
from scale_alibi.regions import load_region, load_release


def _print_plan(plan: dict) -> None:
    title = f"release {plan['release']}" if "release" in plan else "region"
    click.echo(f"{title} at zoom {plan['zoom']}")
    width = max(len(r["name"]) for r in plan["regions"])
    for r in plan["regions"]:
        extra = f"  {r['state']:<3} {r['split']:<8}" if "split" in r else ""
        click.echo(f"  {r['name']:<{width}}{extra} {r['tiles']:>12,}")
    for split, tiles in plan.get("splits", {}).items():
        click.echo(f"  {split} total: {tiles:,}")
    paper = f" (paper: {plan['paper_samples']:,} samples)" if "paper_samples" in plan else ""
    click.echo(f"tiles: {plan['tiles']:,}{paper}")
    for layer, found in plan.get("scenes", {}).items():
        unknown = f" ({found['assets_unknown_size']} assets of unknown size)" if found["assets_unknown_size"] else ""
        click.echo(f"  {layer}: {found['scenes']:,} scenes, {found['bytes'] / 1e9:,.2f} GB{unknown}")
    if "bytes" in plan:
        click.echo(f"bytes to fetch: {plan['bytes'] / 1e9:,.2f} GB")


@click.command("plan")
@click.option("--release", "release", metavar="NAME", help="A named release: small, full or micro.")
@click.option("--region", "region", metavar="NAME|PATH", help="conus, puerto-rico, or a GeoJSON file (EPSG:4326).")
@click.option("--zoom", type=int, default=None, help="Zoom for --region (0-22); releases carry their own.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--scenes", is_flag=True, help="Also search the catalog: scenes per layer and bytes to fetch (online).")
@click.option("--catalog", default=None, metavar="URL", help="STAC API for --scenes [default: Planetary Computer].")
@click.option("--datetime", "interval", default=None, metavar="A/B", help="STAC datetime interval for --scenes.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=MAX_TILES, show_default=True,
              help="Refuse an area that covers more tiles than this (counting stops there).")
def plan(release: str | None, region: str | None, zoom: int | None, as_json: bool,
         scenes: bool, catalog: str | None, interval: str | None, max_tiles: int) -> None:
    """Count the tiles a release or region covers (offline, geometry only; --scenes asks a catalog)."""
    if (catalog or interval) and not scenes:
        raise UserError("--catalog and --datetime only apply with --scenes")
    match release, region:
        case str(), None:
            if zoom is not None:
                raise UserError(f"--zoom applies to --region only; release {release!r} has its own zoom")
            result = plan_release(release, max_tiles)
            areas = [s.geometry for s in load_release(release).subregions] if scenes else []
        case None, str():
            if zoom is None:
                raise UserError("--region needs --zoom (0-22), e.g. --zoom 15")
            result = plan_region(region, zoom, max_tiles)
            areas = [load_region(region)] if scenes else []
        case _:
            raise UserError("give exactly one of --release NAME or --region NAME|PATH")
    if scenes:
        from scale_alibi.curate.search import PLANETARY_COMPUTER

        result["scenes"] = scene_summary(catalog or PLANETARY_COMPUTER, areas, interval)
        result["bytes"] = sum(layer["bytes"] for layer in result["scenes"].values())
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_plan(result)
