"""Regions and releases as data: named outlines (conus, puerto-rico) and the paper's small / full / micro sets.

All geometries are shapely objects in EPSG:4326 (longitude, latitude). See scale_alibi/regions/README.md for
where the outlines come from and how the sub-regions and their train / held-out split were chosen.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.tiles import MAX_LAT

HERE = Path(__file__).resolve().parent
REGIONS: tuple[str, ...] = ("conus", "puerto-rico")
RELEASES: tuple[str, ...] = ("small", "full", "micro")


@dataclass(frozen=True)
class SubRegion:
    """One block of a release: its name, US state (or PR), split ("train" or "heldout") and geometry."""

    name: str
    state: str
    split: str
    geometry: BaseGeometry
    land_cover: str = ""


@dataclass(frozen=True)
class ReleaseSpec:
    """A named release: the zoom its tiles are cut at, the paper's sample count, and its sub-regions."""

    name: str
    zoom: int
    paper_samples: int
    subregions: tuple[SubRegion, ...]

    def split_of(self, name: str) -> str:
        """The split of the sub-region called `name`."""
        return next(s.split for s in self.subregions if s.name == name)


def check_geometry(geometry: BaseGeometry) -> BaseGeometry:
    """Return a valid polygonal geometry inside web-mercator's range, else raise UserError."""
    if geometry is None or geometry.is_empty:
        raise UserError("the region is empty; give a GeoJSON polygon or multipolygon")
    if not math.isfinite(float(shapely.get_coordinates(geometry).sum())):  # NaN/Infinity parse as JSON numbers
        raise UserError("the region has a coordinate that is NaN or infinite; give finite longitude/latitude")
    if not geometry.is_valid:
        # Self-intersections etc. are repaired rather than refused: the covered area is unambiguous.
        geometry = shapely.make_valid(geometry)
    polygons = [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons or sum(p.area for p in polygons) <= 0:
        raise UserError(
            f"the region is a {geometry.geom_type} with no area; give a GeoJSON polygon or multipolygon"
        )
    geometry = shapely.union_all(polygons) if len(polygons) > 1 else polygons[0]
    west, south, east, north = geometry.bounds
    if west < -180 or east > 180 or south < -MAX_LAT or north > MAX_LAT:
        raise UserError(
            f"the region's bounds ({west:.4f}, {south:.4f}, {east:.4f}, {north:.4f}) leave web-mercator's "
            f"range (longitude -180..180, latitude -{MAX_LAT:.4f}..{MAX_LAT:.4f}); use EPSG:4326 "
            "longitude/latitude inside it"
        )
    return geometry


def _read_geojson(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read region file {path}: {exc.__class__.__name__}; check the path") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid GeoJSON (JSON error at line {exc.lineno}: {exc.msg})") from None


def _geometry_of(obj: object, where: str) -> BaseGeometry:
    """The union of a GeoJSON geometry, Feature or FeatureCollection's geometries."""
    if not isinstance(obj, dict) or "type" not in obj:
        raise UserError(f"{where} is not valid GeoJSON (no 'type' member)")
    kind = obj["type"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # shapely warns on NaN; check_geometry refuses it
            geom = _shape_of(obj, kind, where)
    except UserError:
        raise
    except Exception as exc:  # shapely raises several types on malformed coordinates
        raise UserError(f"{where} is not valid GeoJSON ({kind}: {exc})".replace("\n", " ")) from None
    return check_geometry(geom)


def _shape_of(obj: dict, kind: str, where: str) -> BaseGeometry:
    """The shapely geometry of a GeoJSON geometry, Feature or FeatureCollection (unchecked)."""
    if kind == "FeatureCollection":
        geoms = [shape(f["geometry"]) for f in obj.get("features") or [] if f.get("geometry")]
        if not geoms:
            raise UserError(f"{where} is a FeatureCollection with no geometries")
        from shapely import union_all

        return union_all(geoms)
    if kind == "Feature":
        if not obj.get("geometry"):
            raise UserError(f"{where} is a Feature with no geometry")
        return shape(obj["geometry"])
    return shape(obj)


@cache
def _named_region(name: str) -> BaseGeometry:
    return _geometry_of(_read_geojson(HERE / f"{name}.geojson"), f"region {name!r}")


def load_region(name_or_path: str | Path) -> BaseGeometry:
    """A region's geometry (EPSG:4326): "conus", "puerto-rico", or a GeoJSON file's polygons."""
    key = str(name_or_path)
    if key in REGIONS:
        return _named_region(key)
    path = Path(key)
    if not path.is_file():
        raise UserError(
            f"unknown region {key!r}: use one of {', '.join(REGIONS)} or the path of a GeoJSON file"
        )
    return _geometry_of(_read_geojson(path), str(path))


@cache
def load_release(name: str) -> ReleaseSpec:
    """The named release (small, full or micro) with its sub-regions and their splits."""
    if name not in RELEASES:
        raise UserError(f"unknown release {name!r}: use one of {', '.join(RELEASES)}")
    data = _read_geojson(HERE / "releases" / f"{name}.geojson")
    subregions = tuple(
        SubRegion(
            name=f["properties"]["name"],
            state=f["properties"]["state"],
            split=f["properties"]["split"],
            geometry=_geometry_of(f, f"release {name!r} sub-region {f['properties']['name']!r}"),
            land_cover=f["properties"].get("land_cover", ""),
        )
        for f in data["features"]
    )
    return ReleaseSpec(name=name, zoom=int(data["zoom"]), paper_samples=int(data["paper_samples"]), subregions=subregions)
