"""The acquisition plan: which scenes exist, on which grid, with Planetary Computer's ids and properties."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from scale_alibi.devworld.config import WorldConfig

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
MARGIN_M = 240.0  # data beyond the world bbox on every side


@dataclasses.dataclass
class Scene:
    """One STAC item to render: its grid, acquisition and per-scene quirks."""

    collection: str
    id: str
    epsg: int
    transform: Affine
    width: int
    height: int
    datetime: str
    properties: dict
    quirks: dict = dataclasses.field(default_factory=dict)

    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)

    @property
    def half_res_shape(self) -> tuple[int, int]:
        """(height, width) of a grid at twice the pixel size covering every pixel (S2's 20 m SCL)."""
        return -(-self.height // 2), -(-self.width // 2)


def pixel_to_xy(tr: Affine, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates of (fractional) pixel coordinates under an affine transform (vectorised)."""
    cols, rows = np.asarray(cols, float), np.asarray(rows, float)
    return tr.a * cols + tr.b * rows + tr.c, tr.d * cols + tr.e * rows + tr.f


def utm_zone(lon: float) -> int:
    """UTM zone number of a longitude."""
    return int(math.floor((lon + 180.0) / 6.0)) % 60 + 1


def zone_lon_range(zone: int) -> tuple[float, float]:
    """West and east longitude of a UTM zone."""
    w = -180.0 + 6.0 * (zone - 1)
    return w, w + 6.0


def utm_epsg(zone: int, lat: float, nad83: bool = False) -> int:
    """EPSG code of a UTM zone: WGS84 326xx/327xx, or NAD83 269xx."""
    if nad83:
        return 26900 + zone
    return (32600 if lat >= 0 else 32700) + zone


def grid_over(lonlat_box, epsg: int, res: float, snap: float, offset: float = 0.0) -> tuple[Affine, int, int]:
    """Pixel grid (north-up, in epsg) covering a lon/lat box: north-west corner snapped outward to
    `snap`, an odd number of pixels on each side (reaching past the south-east corner)."""
    w, s, e, n = lonlat_box
    t = np.linspace(0, 1, 21)
    lons = np.r_[w + (e - w) * t, np.full(21, e), e - (e - w) * t, np.full(21, w)]
    lats = np.r_[np.full(21, s), s + (n - s) * t, np.full(21, n), n - (n - s) * t]
    xs, ys = warp_transform("EPSG:4326", CRS.from_epsg(epsg), list(lons), list(lats))
    x0 = math.floor((min(xs) - offset) / snap) * snap + offset
    x1 = math.ceil((max(xs) - offset) / snap) * snap + offset
    y0 = math.floor((min(ys) - offset) / snap) * snap + offset
    y1 = math.ceil((max(ys) - offset) / snap) * snap + offset
    width, height = _odd(int(round((x1 - x0) / res))), _odd(int(round((y1 - y0) / res)))
    return Affine(res, 0.0, x0, 0.0, -res, y1), width, height


def _odd(n: int) -> int:
    """n, or n + 1 when even: real scenes have arbitrary sizes, and an odd one is a multiple of no
    overview decimation, so every overview level of its COG has pixels of not exactly f source pixels."""
    return n if n % 2 else n + 1


def _pad(cfg_box, metres: float):
    w, s, e, n = cfg_box
    lat = (s + n) / 2
    dlat = metres / 111195.0
    dlon = dlat / math.cos(math.radians(lat))
    return (w - dlon, s - dlat, e + dlon, n + dlat)


_LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def mgrs_tile(lon: float, lat: float) -> str:
    """MGRS 100 km tile id (e.g. '13SGV') of a point, as Sentinel-2 names its tiles."""
    zone = utm_zone(lon)
    band = _LAT_BANDS[min(int((lat + 80) // 8), 19)]
    xs, ys = warp_transform("EPSG:4326", CRS.from_epsg(utm_epsg(zone, lat)), [lon], [lat])
    e, n = xs[0], ys[0]
    col_sets = ["ABCDEFGH", "JKLMNPQR", "STUVWXYZ"]
    col = col_sets[(zone - 1) % 3][int(e // 100000) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(n // 100000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone}{band}{col}{row}"


def _zones(cfg: WorldConfig) -> list[int]:
    w, _, e, _ = cfg.bbox
    return list(range(utm_zone(w), utm_zone(e - 1e-9) + 1))


def _zone_box(cfg: WorldConfig, zone: int) -> tuple:
    """The part of the (padded) world a scene of `zone` covers: its zone plus a quarter-world overlap."""
    w, s, e, n = _pad(cfg.bbox, MARGIN_M)
    zw, ze = zone_lon_range(zone)
    o = 0.25 * (cfg.bbox[2] - cfg.bbox[0])
    return (max(w, zw - o), s, min(e, ze + o), n)


def s2_scenes(cfg: WorldConfig) -> list[Scene]:
    """Sentinel-2 L2A items: one per date per UTM zone; one cloudy date, one with a swath edge."""
    out = []
    lat_c = cfg.center[1]
    for di, date in enumerate(cfg.s2_dates):
        d = date.replace("-", "")
        sat = "S2A" if di % 2 == 0 else "S2B"
        for zone in _zones(cfg):
            box = _zone_box(cfg, zone)
            epsg = utm_epsg(zone, lat_c)
            tr, w, h = grid_over(box, epsg, 10.0, 60.0)
            tile = mgrs_tile((box[0] + box[2]) / 2, lat_c)
            t = f"{d}T17{39 + di:02d}{11 + zone % 40:02d}"
            sid = f"{sat}_MSIL2A_{t}_R098_T{tile}_{d}T2{di}1530"
            quirks: dict[str, bool | float] = {}
            if date == cfg.s2_cloudy_date:
                quirks["clouds"] = True
            if date == cfg.s2_swath_date and zone == _zones(cfg)[-1]:
                quirks["swath_edge"] = 0.6  # fraction of the width where nodata starts
                quirks["untagged"] = True  # its visual COG has no nodata tag: the edge is black "data" (PC #460)
            if date == cfg.s2_scl_defect_date and zone == _zones(cfg)[0]:
                quirks["scl_defect"] = True
            when = f"{date}T17:{39 + di:02d}:{11 + zone % 40:02d}.024000Z"
            props = {
                "datetime": when,
                "platform": "Sentinel-2A" if sat == "S2A" else "Sentinel-2B",
                "constellation": "Sentinel 2",
                "instruments": ["msi"],
                "s2:mgrs_tile": tile,
                "s2:product_type": "S2MSI2A",
                "s2:processing_baseline": "05.09",
                "s2:datatake_type": "INS-NOBS",
                "sat:orbit_state": "descending",
                "sat:relative_orbit": 98,
                "eo:cloud_cover": 0.0,
                "s2:nodata_pixel_percentage": 0.0,
                "proj:epsg": epsg,
                "proj:code": f"EPSG:{epsg}",
            }
            out.append(Scene("sentinel-2-l2a", sid, epsg, tr, w, h, when, props, quirks))
    return out


def s1_scenes(cfg: WorldConfig) -> list[Scene]:
    """Sentinel-1 RTC items: an ascending pass (stale item proj:transform) in the west zone and a
    descending pass on a grid offset by half a pixel in the east zone."""
    out = []
    zones = _zones(cfg)
    box = _pad(cfg.bbox, MARGIN_M)
    lat_c = cfg.center[1]
    passes = [("ascending", zones[0], 0.0, 78, "S1A"), ("descending", zones[-1], 5.0, 56, "S1A")]
    for i, ((state, zone, offset, rel_orbit, sat), date) in enumerate(zip(passes, cfg.s1_dates)):
        epsg = utm_epsg(zone, lat_c)
        tr, w, h = grid_over(box, epsg, 10.0, 10.0, offset)
        hh = "005012" if state == "ascending" else "124437"
        t0 = _dt.datetime.fromisoformat(f"{date}T{hh[:2]}:{hh[2:4]}:{hh[4:]}")
        t1, tm = t0 + _dt.timedelta(seconds=25), t0 + _dt.timedelta(seconds=12.5)
        abs_orbit = 48867 + 37 * i
        fmt = "%Y%m%dT%H%M%S"
        sid = f"{sat}_IW_GRDH_1SDV_{t0:{fmt}}_{t1:{fmt}}_{abs_orbit:06d}_05E{i}A1_rtc"
        iso = "%Y-%m-%dT%H:%M:%S.%fZ"
        when = f"{tm:{iso}}"
        props = {
            "datetime": when,
            # PC writes these with a space and an offset, and as few fraction digits as needed
            # ("2024-04-19 04:59:04.22+00:00"), unlike its `datetime`.
            "start_datetime": f"{t0:%Y-%m-%d %H:%M:%S}.22+00:00",
            "end_datetime": f"{t1:%Y-%m-%d %H:%M:%S}.653405+00:00",
            "platform": "SENTINEL-1A",
            "constellation": "Sentinel-1",
            "sar:product_type": "GRD",
            "sar:frequency_band": "C",
            "sar:center_frequency": 5.405,
            "sar:instrument_mode": "IW",
            "sar:polarizations": ["VV", "VH"],
            "sar:resolution_range": 20,
            "sar:resolution_azimuth": 22,
            "sar:pixel_spacing_range": 10,
            "sar:pixel_spacing_azimuth": 10,
            "sar:looks_range": 5,
            "sar:looks_azimuth": 1,
            "sar:looks_equivalent_number": 4.4,
            "sat:orbit_state": state,
            "sat:relative_orbit": rel_orbit,
            "sat:absolute_orbit": abs_orbit,
            "s1:instrument_configuration_ID": "7",
            "s1:datatake_id": str(385185 + i),
            "s1:product_timeliness": "Fast-24h",
            "s1:processing_level": "1",
            "s1:resolution": "high",
            "proj:epsg": epsg,
            "proj:code": f"EPSG:{epsg}",
        }
        quirks: dict = {"stale_transform": (30.0, -20.0)} if state == "ascending" else {}
        if state == "ascending" and cfg.s1_zero_border > 0:
            quirks["zero_border"] = cfg.s1_zero_border  # 0.0 in both polarisations, inside the geometry (PC #307, #493)
        out.append(Scene("sentinel-1-rtc", sid, epsg, tr, w, h, when, props, quirks))
    return out


_NAIP_DATES = {"2020": "2020-07-14", "2022": "2022-06-12", "2023": "2023-05-30"}


def naip_scenes(cfg: WorldConfig) -> list[Scene]:
    """NAIP items: overlapping quarter-quad-like footprints (scaled down), in NAD83 UTM of each
    footprint's centre. The newest year covers the world; older years its north-west quarter+."""
    out = []
    w, s, e, n = cfg.bbox
    span_m = max((e - w) * 111195.0 * math.cos(math.radians((s + n) / 2)), (n - s) * 111195.0)
    k = max(cfg.naip_grid, math.ceil(span_m / 1500.0))  # footprints stay ~1.5 km: bounded memory
    buf = 45.0  # metres of overlap around each footprint, like real quarter-quads' buffers
    years = sorted(cfg.naip_years)
    for yi, year in enumerate(years):
        date = _NAIP_DATES.get(year, f"{year}-07-01")
        for i in range(k):  # rows from north
            for j in range(k):
                if yi < len(years) - 1 and not (i < (k + 1) // 2 and j < (k + 1) // 2):
                    continue
                cell = (w + (e - w) * j / k, n - (n - s) * (i + 1) / k, w + (e - w) * (j + 1) / k, n - (n - s) * i / k)
                lon_c, lat_c = (cell[0] + cell[2]) / 2, (cell[1] + cell[3]) / 2
                zone = utm_zone(lon_c)
                epsg = utm_epsg(zone, lat_c, nad83=True)
                tr, width, height = grid_over(_pad(cell, buf), epsg, 0.6, 0.6)
                quad = f"{int(abs(lat_c)):02d}{int(abs(lon_c)):03d}{(i * k + j + 1):02d}"
                qq = ("nw", "ne", "sw", "se")[(i % 2) * 2 + (j % 2)]
                sid = f"{cfg.naip_state}_m_{quad}_{qq}_{zone}_060_{date.replace('-', '')}"
                when = f"{date}T16:00:00Z"
                props = {
                    "datetime": when,
                    "gsd": 0.6,
                    "naip:year": year,
                    "naip:state": cfg.naip_state,
                    "proj:epsg": epsg,
                    "proj:code": f"EPSG:{epsg}",
                }
                out.append(Scene("naip", sid, epsg, tr, width, height, when, props))
    if cfg.naip_fine_year:
        out.append(_naip_fine(cfg))
    return out


def _naip_fine(cfg: WorldConfig) -> Scene:
    """The newest NAIP year at 0.3 m (as PR 2022, ME/VT 2023): one footprint, a fifth of the world's
    side, just south-east of its centre, whose north-west corner is a black collar inside its geometry."""
    w, s, e, n = cfg.bbox
    dx, dy = (e - w) / 5, (n - s) / 5
    cell = (w + 2.6 * dx, s + 1.4 * dy, w + 3.6 * dx, s + 2.4 * dy)
    lon_c, lat_c = (cell[0] + cell[2]) / 2, (cell[1] + cell[3]) / 2
    zone = utm_zone(lon_c)
    epsg = utm_epsg(zone, lat_c, nad83=True)
    tr, width, height = grid_over(cell, epsg, 0.3, 0.6)
    year = cfg.naip_fine_year
    date = _NAIP_DATES.get(year, f"{year}-07-01")
    sid = f"{cfg.naip_state}_m_{int(abs(lat_c)):02d}{int(abs(lon_c)):03d}99_nw_{zone}_030_{date.replace('-', '')}"
    when = f"{date}T16:00:00Z"
    props = {"datetime": when, "gsd": 0.3, "naip:year": year, "naip:state": cfg.naip_state,
             "proj:epsg": epsg, "proj:code": f"EPSG:{epsg}"}
    return Scene("naip", sid, epsg, tr, width, height, when, props, {"black_collar": 0.6})


def plan(cfg: WorldConfig) -> list[Scene]:
    """Every scene of the world."""
    return s2_scenes(cfg) + s1_scenes(cfg) + naip_scenes(cfg)
