"""How the committed GeoJSON files in `scale_alibi/regions/` were made (run by hand once; not used at run time).

    pip download geopandas==0.14.4 --no-deps -d /tmp/ne && pip install pyshp
    python -m scale_alibi.regions.derive outlines /tmp/ne/geopandas-0.14.4-py3-none-any.whl
    python -m scale_alibi.regions.derive releases

`outlines` reads Natural Earth 1:110m admin-0 countries (public domain) from the geopandas 0.14.x
wheel's `datasets/naturalearth_lowres` and writes `conus.geojson` (the USA polygon part that is
the contiguous lower 48) and `puerto-rico.geojson`. `releases` writes `releases/<name>.geojson`
from the SITES table below: each sub-region is a block of whole tiles at the release's zoom,
centred on the site, sized so the release's planned tiles come close to the paper's Table 1.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import mercantile
from shapely.geometry import box, mapping, shape

HERE = Path(__file__).resolve().parent
NE_STEM = "geopandas/datasets/naturalearth_lowres/naturalearth_lowres"
SOURCE = "Natural Earth 1:110m Cultural Vectors, Admin 0 - Countries (public domain), via geopandas 0.14.4 naturalearth_lowres"

# Sites: (name, state, split, land cover, lon, lat). Held-out sites are whole, distant blocks,
# each with a training site of similar cover elsewhere (desert, grassland, forest, delta, city).
SITES: dict[str, tuple[str, str, str, str, float, float]] = {
    s[0]: s
    for s in [
        ("iowa-corn-belt", "IA", "train", "row-crop cropland (corn, soy)", -93.6, 42.2),
        ("central-valley", "CA", "train", "irrigated orchards and fields", -119.9, 36.7),
        ("oregon-cascades", "OR", "train", "evergreen conifer forest, volcanic peaks", -122.0, 44.3),
        ("colorado-rockies", "CO", "train", "alpine tundra, snow, subalpine forest", -106.2, 39.4),
        ("great-basin", "NV", "train", "sagebrush shrubland, salt flats, ranges", -116.8, 39.6),
        ("north-dakota-plains", "ND", "train", "small grains, prairie potholes (wetlands)", -99.3, 47.4),
        ("south-florida", "FL", "train", "sawgrass wetland, sugarcane, Lake Okeechobee", -81.0, 26.9),
        ("atlanta-piedmont", "GA", "train", "dense urban and suburban, mixed forest", -84.4, 33.8),
        ("maine-north-woods", "ME", "train", "mixed northern forest, lakes, clear-cuts", -69.4, 45.6),
        ("puerto-rico-central", "PR", "train", "tropical forest, karst, towns", -66.5, 18.2),
        ("sonoran-desert", "AZ", "heldout", "desert scrub, irrigated farms, Phoenix fringe", -112.4, 33.0),
        ("flint-hills", "KS", "heldout", "tallgrass prairie and rangeland", -96.5, 38.5),
        ("appalachian-plateau", "WV", "heldout", "deciduous forest, surface mines", -80.9, 38.4),
        ("houston-coastal-plain", "TX", "heldout", "urban, coastal prairie, petrochemical", -95.5, 29.9),
        ("mississippi-delta", "MS", "train", "delta cropland (cotton, rice), bottomland", -90.6, 33.4),
    ]
}

# Release -> (zoom, paper samples, {site: block}): a block is n x n tiles, or (columns, rows).
RELEASES: dict[str, tuple[int, int, dict[str, int | tuple[int, int]]]] = {
    "small": (15, 21_497, {
        "iowa-corn-belt": 46, "central-valley": 46, "oregon-cascades": 46, "colorado-rockies": 46,
        "great-basin": 46, "atlanta-piedmont": 46, "south-florida": 46,
        "sonoran-desert": 46, "flint-hills": 46, "appalachian-plateau": 46,
    }),
    "full": (15, 146_502, {
        "iowa-corn-belt": 101, "central-valley": 101, "oregon-cascades": 101, "colorado-rockies": 101,
        "great-basin": 101, "north-dakota-plains": 101, "south-florida": 101, "atlanta-piedmont": 101,
        "maine-north-woods": 101, "puerto-rico-central": (100, 30),
        "sonoran-desert": 101, "flint-hills": 101, "appalachian-plateau": 101, "houston-coastal-plain": 101,
        "mississippi-delta": 101,
    }),
    "micro": (17, 188_060, {
        "iowa-corn-belt": 137, "central-valley": 137, "oregon-cascades": 137, "colorado-rockies": 137,
        "atlanta-piedmont": 137, "maine-north-woods": 137, "south-florida": 137,
        "sonoran-desert": 137, "houston-coastal-plain": 137, "appalachian-plateau": 137,
    }),
}


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


def outlines(wheel: str) -> None:
    """Write conus.geojson and puerto-rico.geojson from the Natural Earth shapefile in the wheel."""
    import shapefile  # pyshp: only needed for this one-off derivation

    z = zipfile.ZipFile(wheel)
    files = {ext: io.BytesIO(z.read(f"{NE_STEM}.{ext}")) for ext in ("shp", "shx", "dbf")}
    # The .cpg names the dbf's text encoding (pyshp reads it only from a path, not from buffers).
    reader = shapefile.Reader(**files, encoding=z.read(f"{NE_STEM}.cpg").decode().strip() or "latin-1")
    records = {r.record["iso_a3"]: shape(r.shape.__geo_interface__) for r in reader.iterShapeRecords()}
    # The lower 48 is the USA part that contains Kansas; the other parts are Alaska and Hawaii.
    usa = records["USA"]
    conus = next(p for p in usa.geoms if p.contains(box(-98.6, 39.7, -98.5, 39.8)))
    for name, geom, label in [("conus", conus, "contiguous United States (lower 48)"),
                              ("puerto-rico", records["PRI"], "Puerto Rico")]:
        _write(HERE / f"{name}.geojson", {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {"name": name, "label": label, "source": SOURCE},
                          "geometry": mapping(geom)}],
        })


def _block(lon: float, lat: float, zoom: int, size: int | tuple[int, int]) -> tuple[float, float, float, float]:
    """A block of whole tiles at `zoom` around (lon, lat), as (west, south, east, north)."""
    nx, ny = (size, size) if isinstance(size, int) else size
    centre = mercantile.tile(lon, lat, zoom)
    x0, y0 = centre.x - nx // 2, centre.y - ny // 2
    west, _, _, north = mercantile.bounds(x0, y0, zoom)
    _, south, east, _ = mercantile.bounds(x0 + nx - 1, y0 + ny - 1, zoom)
    return west, south, east, north


def releases() -> None:
    """Write releases/<name>.geojson: tile-aligned square blocks around each site."""
    for release, (zoom, paper, blocks) in RELEASES.items():
        features = []
        for site, n in blocks.items():
            name, state, split, cover, lon, lat = SITES[site]
            features.append({
                "type": "Feature",
                "properties": {"name": name, "state": state, "split": split, "land_cover": cover},
                "geometry": mapping(box(*_block(lon, lat, zoom, n))),
            })
        _write(HERE / "releases" / f"{release}.geojson", {
            "type": "FeatureCollection", "name": release, "zoom": zoom, "paper_samples": paper,
            "features": features,
        })


if __name__ == "__main__":
    {"outlines": lambda: outlines(sys.argv[2]), "releases": releases}[sys.argv[1]]()
