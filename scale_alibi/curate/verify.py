"""Repair of a damaged release: re-cut only the metatiles that hold damaged files, through the
build's own path (same catalog search, same cut, staged and fsynced), and replace a damaged file
only by re-cut bytes whose hash is the manifest's: the repaired tree is byte-identical to the
release as built, or the caller is told what could not be fixed. Finding damage: curate.damage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import manifest_metadata
from scale_alibi.curate.damage import Damage

if TYPE_CHECKING:
    from scale_alibi.curate.build.output import ReleaseOutput


def build_inputs(meta: dict[str, Any]):
    """(BuildParams, region geometry or None, named-release spec or None) a release was built from,
    read back from its manifest metadata."""
    from scale_alibi.curate.build import BuildParams

    try:
        p = dict(meta["params"])
        p["naip_years"] = tuple(p["naip_years"]) if p.get("naip_years") else None
        params = BuildParams(**p)
    except (KeyError, TypeError) as e:
        raise UserError(f"the manifest does not record the build parameters ({e}); rebuild the release") from None
    label = params.region
    if label.startswith("release:"):
        from scale_alibi.regions import load_release

        return params, None, load_release(label.removeprefix("release:"))
    if label.startswith("geometry:"):
        import shapely.wkt
        from shapely.errors import ShapelyError

        try:
            return params, shapely.wkt.loads(label.removeprefix("geometry:")), None
        except ShapelyError:
            raise UserError(f"release {params.release} was built from a region the manifest records only by its "
                            "hash; rerun the same `curate build` command, which re-cuts missing or truncated "
                            "files") from None
    from scale_alibi.regions import load_region

    return params, load_region(label), None


def repair(output: ReleaseOutput, damage: list[Damage], catalog: str | None, signer: Any, progress: bool,
           echo: Callable[[str], None]) -> list[str]:
    """Re-cut the metatiles holding `damage` and replace the damaged files; returns what stayed damaged."""
    from scale_alibi.curate.build import group_metatiles, plan_tiles, recut_files

    with output.lock():
        meta = manifest_metadata(output.read_manifest())
        params, geometry, spec = build_inputs(meta)
        catalog = catalog or str(meta.get("catalog") or "")
        if not catalog:
            raise UserError("the manifest records no catalog; pass --catalog (the STAC API the release was built from)")
        from scale_alibi.curate.search import open_catalog

        open_catalog(catalog)
        tiles = plan_tiles(params, geometry=geometry, spec=spec)
        metatiles = group_metatiles(tiles, params.zoom, params.metatile_levels)
        return recut_files(output, params, metatiles, damage, catalog, signer, progress, echo)
