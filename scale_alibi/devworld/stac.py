"""STAC Collections and Items shaped like Planetary Computer's (ids, asset keys, media types, roles, properties)."""

from __future__ import annotations

import numpy as np
from rasterio.warp import transform as warp_transform
from shapely.geometry import Polygon, box, mapping

from scale_alibi.devworld.config import WorldConfig
from scale_alibi.devworld.scenes import COG, Scene, pixel_to_xy

HREF_PREFIX = "{FILES_URL}/"  # replaced by the file server's URL at serve time
# Collections that declare `msft:requires_account: true`, as Planetary Computer's sentinel-1-rtc does:
# their tokens need a subscription key when the file server's token service is told to require one.
REQUIRES_ACCOUNT = ("sentinel-1-rtc",)

_EXT = {
    "sentinel-2-l2a": [
        "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    ],
    "sentinel-1-rtc": [
        "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
        "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    ],
    "naip": [
        "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    ],
}

_TITLES = {
    "sentinel-2-l2a": "Sentinel-2 Level-2A (synthetic world)",
    "sentinel-1-rtc": "Sentinel 1 Radiometrically Terrain Corrected (RTC) (synthetic world)",
    "naip": "NAIP: National Agriculture Imagery Program (synthetic world)",
}


def _band(name, common=None, desc=None):
    b = {"name": name}
    if common:
        b["common_name"] = common
    if desc:
        b["description"] = desc
    return b


def footprint(scene: Scene, valid_px: Polygon | None = None) -> Polygon:
    """Lon/lat polygon of a scene's (valid) pixels, densified so projection curvature is kept."""
    poly = valid_px if valid_px is not None else box(0, 0, scene.width, scene.height)
    ring = np.asarray(poly.exterior.coords)
    pts = []
    for (c0, r0), (c1, r1) in zip(ring[:-1], ring[1:]):
        for t in np.linspace(0, 1, 9)[:-1]:
            pts.append((c0 + (c1 - c0) * t, r0 + (r1 - r0) * t))
    px = np.array(pts)
    xs, ys = pixel_to_xy(scene.transform, px[:, 0], px[:, 1])
    lon, lat = warp_transform(scene.crs, "EPSG:4326", list(xs), list(ys))
    return Polygon([(round(a, 7), round(b, 7)) for a, b in zip(lon, lat)]).buffer(0)


def _tr(t) -> list[float]:
    return [t.a, t.b, t.c, t.d, t.e, t.f]


def item(scene: Scene, valid_px: Polygon | None, assets: dict, extra_props: dict) -> dict:
    """A STAC Item dict with hrefs relative to HREF_PREFIX."""
    geom = footprint(scene, valid_px)
    props = dict(scene.properties)
    props.update(extra_props)
    tr = scene.transform
    x0, y1 = tr.c, tr.f
    x1, y0 = x0 + tr.a * scene.width, y1 + tr.e * scene.height
    proj_tr = _tr(tr)
    if "stale_transform" in scene.quirks:  # the file's own georeferencing stays right
        dx, dy = scene.quirks["stale_transform"]
        proj_tr[2] += dx
        proj_tr[5] += dy
    if scene.collection != "sentinel-2-l2a":  # S2 carries shape/transform per asset (10 m vs 20 m)
        props.update({"proj:shape": [scene.height, scene.width], "proj:transform": proj_tr, "proj:bbox": [x0, y0, x1, y1]})
    if scene.collection != "sentinel-1-rtc":  # PC's S1 RTC items carry no `updated`
        props["updated"] = "2024-01-15T08:00:00Z"
    if scene.collection == "naip":
        c = geom.centroid
        props["proj:centroid"] = {"lat": round(c.y, 5), "lon": round(c.x, 5)}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": _EXT[scene.collection],
        "id": scene.id,
        "collection": scene.collection,
        "geometry": mapping(geom),
        "bbox": [round(v, 7) for v in geom.bounds],
        "properties": props,
        "assets": assets,
        "links": [],
    }


def s2_assets(scene: Scene) -> dict:
    base = f"{HREF_PREFIX}sentinel-2-l2a/{scene.id}/"
    tr = scene.transform
    return {
        "visual": {
            "href": base + "visual.tif",
            "type": COG,
            "roles": ["data"],
            "title": "True color image",
            "gsd": 10.0,
            "eo:bands": [_band("B04", "red"), _band("B03", "green"), _band("B02", "blue")],
            "proj:shape": [scene.height, scene.width],
            "proj:transform": _tr(tr),
            "proj:bbox": [tr.c, tr.f + tr.e * scene.height, tr.c + tr.a * scene.width, tr.f],
        },
        "SCL": {
            "href": base + "SCL.tif",
            "type": COG,
            "roles": ["data"],
            "title": "Scene classfication map (SCL)",
            "gsd": 20.0,
            "proj:shape": list(scene.half_res_shape),
            "proj:transform": [20.0, 0.0, tr.c, 0.0, -20.0, tr.f],
        },
    }


def s1_file(pol: str) -> str:
    """An S1 RTC polarisation's file, below its item's folder, named as on PC."""
    return f"measurement/iw-{pol}.rtc.tiff"


def s1_assets(scene: Scene) -> dict:
    base = f"{HREF_PREFIX}sentinel-1-rtc/{scene.id}/"
    out = {}
    for pol in ("vv", "vh"):
        P = pol.upper()
        out[pol] = {
            "href": base + s1_file(pol),
            "type": COG,
            "roles": ["data"],
            "title": f"{P}: {'vertical' if P[0] == 'V' else 'horizontal'} transmit, {'vertical' if P[1] == 'V' else 'horizontal'} receive",
            "description": f"Terrain-corrected gamma naught values of signal transmitted with {P[0]} polarization and received with {P[1]} polarization with radiometric terrain correction applied.",
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0, "scale": 1.0, "offset": 0.0}],
        }
    return out


def naip_assets(scene: Scene) -> dict:
    return {
        "image": {
            "href": f"{HREF_PREFIX}naip/{scene.id}/image.tif",
            "type": COG,
            "roles": ["data"],
            "title": "RGBIR COG tile",
            "eo:bands": [_band("Red", "red"), _band("Green", "green"), _band("Blue", "blue"), _band("NIR", "nir", "near-infrared")],
        }
    }


def collection(cid: str, cfg: WorldConfig, items: list[dict]) -> dict:
    """A STAC Collection covering its items."""
    dts = sorted(i["properties"]["datetime"] for i in items)
    xs = [i["bbox"] for i in items]
    bbox = [min(b[0] for b in xs), min(b[1] for b in xs), max(b[2] for b in xs), max(b[3] for b in xs)]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": cid,
        "title": _TITLES[cid],
        "description": f"{_TITLES[cid]}: rendered from an analytic ground truth (seed {cfg.seed}) for offline tests.",
        "license": {"sentinel-1-rtc": "CC-BY-4.0"}.get(cid, "proprietary"),  # as PC declares them
        "keywords": ["synthetic"],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[dts[0], dts[-1]]]}},
        "links": [],
        "item_assets": {k: {kk: vv for kk, vv in v.items() if kk in ("type", "roles", "title", "gsd")} for k, v in items[0]["assets"].items()},
        **({"msft:requires_account": True} if cid == "sentinel-1-rtc" else {}),  # as PC declares it
    }


def cloud_cover(scl: np.ndarray) -> float:
    """eo:cloud_cover as S2 L2A reports it: % of valid SCL pixels in classes 8, 9, 10."""
    valid = scl != 0
    n = int(valid.sum())
    return 0.0 if n == 0 else round(100.0 * float(np.isin(scl, (8, 9, 10)).sum()) / n, 6)


