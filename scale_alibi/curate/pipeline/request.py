"""One build request: what to build (region or named release, zoom, filters, catalog), resolved and
checked once where it enters (the CLI, or an API caller), then carried whole; and how to run it
(RunOptions: scheduler, signer, progress), which never changes what is built."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mercantile

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import check_release_name
from scale_alibi.curate.pipeline.params import BuildParams, check_build_zoom, check_params, split_of
from scale_alibi.curate.plan import MAX_TILES, check_plan_size
from scale_alibi.curate.search import PLANETARY_COMPUTER, TIMEOUT_S, SearchOptions

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from scale_alibi.regions import ReleaseSpec


@dataclass(frozen=True)
class BuildRequest:
    """A resolved build: its content parameters (recorded in the manifest), the catalog, and the area,
    either a region's outline or a named release's sub-regions (exactly one of `geometry`, `spec`)."""

    params: BuildParams
    catalog: str
    geometry: BaseGeometry | None = None
    spec: ReleaseSpec | None = None

    @property
    def release(self) -> str:
        return self.params.release

    @property
    def zoom(self) -> int:
        return self.params.zoom

    def search_options(self, concurrency: int = SearchOptions.concurrency) -> SearchOptions:
        """The filters and time windows every STAC search of this build applies (S1/S2 within
        max_gap_days of the NAIP captures found), `concurrency` searches at once."""
        p = self.params
        return SearchOptions(datetime=p.datetime, max_cloud=p.max_cloud, s1_mode=p.s1_mode, naip_years=p.naip_years,
                             max_gap_days=p.max_gap_days, concurrency=concurrency)

    def plan(self) -> dict[mercantile.Tile, str]:
        """{tile: split} of every tile of the build: a named release's sub-region splits, or a region's
        spatially blocked split (split_of)."""
        from scale_alibi.curate.plan import iter_release_tiles, iter_tiles

        tiles: dict[mercantile.Tile, str] = {}
        if self.spec is not None:
            for sub, t in iter_release_tiles(self.spec):  # at the spec's zoom, which is the request's
                tiles.setdefault(t, sub.split)
        else:
            p = self.params
            for t in iter_tiles(self.geometry, p.zoom):
                tiles[t] = split_of(t.z, t.x, t.y, p.heldout_fraction, p.split_levels)
        return tiles


def resolve_request(
    *,
    region: str | Path | BaseGeometry | None = None,
    release: str | None = None,
    zoom: int | None = None,
    catalog: str | None = None,
    datetime: str | None = None,
    naip_years: tuple[int, int] | None = None,
    max_cloud: float = BuildParams.max_cloud,
    max_gap_days: float = BuildParams.max_gap_days,
    min_valid: float = BuildParams.min_valid,
    metatile_levels: int = BuildParams.metatile_levels,
    heldout_fraction: float = BuildParams.heldout_fraction,
    split_levels: int = BuildParams.split_levels,
    max_tiles: int = MAX_TILES,
) -> BuildRequest:
    """Resolve and check a build once: `region` (a name, a GeoJSON path or a shapely geometry) at
    `zoom`, written as `release` (default <region>-z<zoom>); or, with no region, the named release
    `release` of paper Table 1 at its own zoom (a different `zoom` is refused: its tiles are planned
    at the release's zoom). An area of more than `max_tiles` tiles is refused (a build holds its plan
    in memory). Raises UserError (one line: what was wrong, what to do)."""
    spec = geometry = None
    if release is not None:
        check_release_name(release)
    if region is None:
        if not release:
            raise UserError("give --region (a name or GeoJSON file) or --release (a named release)")
        from scale_alibi.regions import load_release

        spec = load_release(release)
        if zoom is not None:
            check_build_zoom(zoom)
            if zoom != spec.zoom:
                raise UserError(f"--zoom {zoom} differs from release {spec.name}'s zoom {spec.zoom}: a named release "
                                f"is cut at its own zoom; omit --zoom, or build --region ... --zoom {zoom}")
        zoom = spec.zoom
        region_label = f"release:{spec.name}"
    else:
        if zoom is None:
            raise UserError("--zoom is required with --region")
        check_build_zoom(zoom)
        if isinstance(region, (str, Path)):
            from scale_alibi.regions import load_region

            region_label = str(region)
            geometry = load_region(region)
        else:
            geometry = region
            wkt = geometry.wkt
            region_label = f"geometry:{wkt if len(wkt) < 400 else hashlib.sha256(geometry.wkb).hexdigest()}"
        if not release:
            release = check_release_name(
                f"{Path(str(region)).stem if isinstance(region, (str, Path)) else 'region'}-z{zoom}")
    params = BuildParams(release=release, zoom=zoom, region=region_label, datetime=datetime, max_cloud=max_cloud,
                         naip_years=(naip_years[0], naip_years[1]) if naip_years else None,
                         max_gap_days=max_gap_days, min_valid=min_valid, metatile_levels=metatile_levels,
                         heldout_fraction=heldout_fraction, split_levels=split_levels)
    check_params(params)
    if datetime:
        from scale_alibi.curate.search import parse_interval

        parse_interval(datetime)
    # Before anything is written: the plan is held in memory, tile by tile.
    check_plan_size(geometry, spec, zoom, max_tiles, f"release {spec.name}" if spec is not None else "the region")
    return BuildRequest(params, catalog or PLANETARY_COMPUTER, geometry, spec)


def recorded_request(meta: dict[str, Any], catalog: str | None = None) -> BuildRequest:
    """The request a finished release was built from, read back from its manifest metadata (`catalog`
    overrides the recorded one)."""
    try:
        p = dict(meta["params"])
        p["naip_years"] = tuple(p["naip_years"]) if p.get("naip_years") else None
        params = BuildParams(**p)
    except (KeyError, TypeError) as e:
        raise UserError(f"the manifest does not record the build parameters ({e}); rebuild the release") from None
    catalog = catalog or str(meta.get("catalog") or "")
    if not catalog:
        raise UserError("the manifest records no catalog; pass --catalog (the STAC API the release was built from)")
    label = params.region
    if label.startswith("release:"):
        from scale_alibi.regions import load_release

        return BuildRequest(params, catalog, spec=load_release(label.removeprefix("release:")))
    if label.startswith("geometry:"):
        import shapely.wkt
        from shapely.errors import ShapelyError

        try:
            return BuildRequest(params, catalog, geometry=shapely.wkt.loads(label.removeprefix("geometry:")))
        except ShapelyError:
            raise UserError(f"release {params.release} was built from a region the manifest records only by its "
                            "hash; rerun the same `curate build` command, which re-cuts missing or truncated "
                            "files") from None
    from scale_alibi.regions import load_region

    return BuildRequest(params, catalog, geometry=load_region(label))


def echo_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class RunOptions:
    """How a build runs (never what it builds). `scheduler`: None (LocalCluster sized to the machine),
    "threads", "synchronous" (no Dask: this process, one thread) or a "tcp://host:port" address.
    `signer`: None (Planetary Computer), "none", "module:function", or a picklable callable.
    `timeout_s`: how long any one network call may wait for an answer. `search_concurrency`: catalog
    searches running at once, whatever the cluster's size. `allow_empty`: seal a release with no
    complete triplet instead of refusing it."""

    signer: Any = None
    scheduler: str | None = None
    workers: int | None = None
    timeout_s: float = TIMEOUT_S
    search_concurrency: int = SearchOptions.concurrency
    allow_empty: bool = False
    progress: bool = False
    echo: Callable[[str], None] = echo_stderr

    def __post_init__(self) -> None:
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise UserError(f"--workers {self.workers} must be at least 1")
        if not 0 < self.timeout_s < float("inf"):
            raise UserError(f"--timeout {self.timeout_s} must be a positive number of seconds")
        if not (isinstance(self.search_concurrency, int) and self.search_concurrency >= 1):
            raise UserError(f"--search-concurrency {self.search_concurrency} must be a whole number >= 1")
