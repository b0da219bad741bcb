"""The synthetic world's data: a real STAC API whose items and COGs match the analytic truth (clouds,
swath edges, speckle, NAIP years, overviews) and carry real Planetary Computer irregularities."""

from __future__ import annotations

import json

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject
from rasterio.warp import transform as warp_transform

from scale_alibi.devworld.scenes import pixel_to_xy
from scale_alibi.devworld.truth import band_limit, phase_shift, render_truth, sample_truth
from tests.world_rows import search

COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _epsg(item) -> int:
    """EPSG of an item: pystac migrates PC's proj:epsg to proj:code ("EPSG:326xx") on read."""
    p = item.properties
    return int(p["proj:epsg"]) if "proj:epsg" in p else int(p["proj:code"].split(":")[1])



def _centres_vs_truth(href, layer, n=400, seed=0, shift=0.0, band=None):
    """COG values at random interior pixel centres, and the truth there (or `shift` px off)."""
    rng = np.random.default_rng(seed)
    with rasterio.open(href) as ds:
        data = ds.read()
        rows = rng.integers(2, ds.height - 2, n)
        cols = rng.integers(2, ds.width - 2, n)
        xs, ys = pixel_to_xy(ds.transform, cols + 0.5 + shift, rows + 0.5 + shift)
        lon, lat = warp_transform(ds.crs, "EPSG:4326", list(xs), list(ys))
        nodata = ds.nodata
    vals = data[:, rows, cols].astype(np.float64)
    ok = np.ones(n, bool) if nodata is None else (vals != nodata).all(axis=0)
    truth = sample_truth(layer, np.array(lon), np.array(lat))
    if band is not None:
        truth = truth[band : band + 1]
    return vals[:, ok], truth[:, ok]


# -- STAC API + pixels vs ground truth ----------------------------------------------------------
def test_s2_search_cloud_filter_and_pixels_match_truth_subpixel(world):
    items = search(world, "sentinel-2-l2a", datetime="2023-06-01/2023-06-30")
    assert {_epsg(i) for i in items} == {32613, 32614}  # straddles a zone edge
    assert len(search(world, "sentinel-2-l2a", datetime="2023-06-14/2023-06-16")) == 2
    clear = [i for i in items if i.properties["eo:cloud_cover"] < 20]  # client-side: no `query`
    cloudy = [i for i in items if i.properties["eo:cloud_cover"] > 50]
    assert len(clear) == 4 and len(cloudy) == 2
    item = next(i for i in clear if i.properties["s2:nodata_pixel_percentage"] == 0)
    assert item.properties["s2:mgrs_tile"] in item.id and item.properties["platform"].startswith("Sentinel-2")
    asset = item.assets["visual"]
    assert asset.media_type == COG and asset.roles == ["data"]
    assert asset.href.startswith(world.files_url + "/")
    cog, truth = _centres_vs_truth(asset.href, "s2")
    err = np.abs(cog - truth)
    assert err.mean() < 0.6 and err.max() <= 1.5  # rounding to uint8, nothing else
    cog_s, truth_s = _centres_vs_truth(asset.href, "s2", shift=0.25)
    assert np.abs(cog_s - truth_s).mean() > 3 * err.mean()  # a quarter pixel off is visible


def test_s2_clouds_in_scl_and_swath_edge_nodata(world):
    items = search(world, "sentinel-2-l2a")
    cloudy = max(items, key=lambda i: i.properties["eo:cloud_cover"])
    with rasterio.open(cloudy.assets["SCL"].href) as ds:
        assert ds.res == (20.0, 20.0) and ds.dtypes[0] == "uint8"
        scl = ds.read(1)
    frac = np.isin(scl, (8, 9, 10)).mean() * 100
    assert abs(frac - cloudy.properties["eo:cloud_cover"]) < 0.01 and frac > 30
    swath = [i for i in items if i.properties["s2:nodata_pixel_percentage"] > 5]
    assert len(swath) == 1
    with rasterio.open(swath[0].assets["visual"].href) as ds:
        vis = ds.read()
        assert ds.nodata is None  # as some PC visual COGs: the black swath edge is untagged
    with rasterio.open(swath[0].assets["SCL"].href) as ds:
        assert (ds.read(1) == 0).mean() > 0.2  # SCL 0 ("no data") under the edge
    assert ((vis == 0).all(axis=0).mean() * 100 - swath[0].properties["s2:nodata_pixel_percentage"]) < 0.01
    # The item geometry is the valid-data footprint, not the raster's rectangle.
    full = next(i for i in items if _epsg(i) == _epsg(swath[0]) and i.id != swath[0].id)
    assert swath[0].bbox[2] < full.bbox[2] - 0.005


def test_scl_says_no_data_and_defective_where_the_visual_has_pixels(world):
    """The west-zone S2 scene of s2_scl_defect_date: a disc of SCL 1 (north, visual saturated white)
    and SCL 0 (south, visual ordinary ground), inside the same day's east-zone scene."""
    day = world.config.s2_scl_defect_date
    items = search(world, "sentinel-2-l2a", datetime=day)
    (item,) = [i for i in items if _epsg(i) % 100 == 13]
    with rasterio.open(item.assets["SCL"].href) as ds:
        scl, t20 = ds.read(1), ds.transform
    with rasterio.open(item.assets["visual"].href) as ds:
        vis, t10 = ds.read(), ds.transform

    def visual_at(code):
        rows, cols = np.nonzero(scl == code)
        xs, ys = pixel_to_xy(t20, cols + 0.5, rows + 0.5)
        c10, r10 = pixel_to_xy(~t10, xs, ys)
        return vis[:, r10.astype(int), c10.astype(int)]

    assert (scl == 1).sum() > 50 and (scl == 0).sum() > 50  # a 150 m radius at 20 m: ~177 px in all
    assert (visual_at(1) == 255).all(axis=0).mean() > 0.9  # (the 10 m and 20 m discs differ at their rims)
    assert (visual_at(0) > 0).all() and (visual_at(0) < 255).any()  # nothing there looks like nodata
    from shapely.geometry import Point, shape

    # ...and the same day's east-zone scene covers the disc, with ordinary SCL (a build fills from it).
    rows, cols = np.nonzero(np.isin(scl, (0, 1)))
    xs, ys = pixel_to_xy(t20, cols + 0.5, rows + 0.5)
    lon, lat = warp_transform(ds.crs, "EPSG:4326", list(xs), list(ys))
    (other,) = [i for i in items if _epsg(i) % 100 == 14]
    assert all(shape(other.geometry).contains(Point(a, b)) for a, b in zip(lon, lat))


def test_s1_collection_requires_an_account_as_on_pc(world):
    import pystac_client

    coll = pystac_client.Client.open(world.stac_url).get_collection("sentinel-1-rtc").to_dict()
    assert coll["msft:requires_account"] is True


def test_s1_passes_speckle_bright_targets_and_truth(world, world_dir):
    items = search(world, "sentinel-1-rtc", datetime="2023-06-01/2023-06-30")
    by_state = {i.properties["sat:orbit_state"]: i for i in items}
    assert set(by_state) == {"ascending", "descending"}
    for it in items:
        p = it.properties
        assert p["sar:instrument_mode"] == "IW" and p["sar:polarizations"] == ["VV", "VH"]
        assert set(it.assets) >= {"vv", "vh"} and it.assets["vv"].media_type == COG
    grids = {}
    for state, it in by_state.items():
        with rasterio.open(it.assets["vv"].href) as ds:
            assert ds.dtypes[0] == "float32" and ds.nodata == -32768 and ds.res == (10.0, 10.0)
            grids[state] = ds.transform
            vv = ds.read(1)
        assert (vv > 10).sum() >= 3  # saturates any 8-bit mapping
        cog, truth = _centres_vs_truth(it.assets["vv"].href, "s1", n=3000, band=0)
        keep = (cog[0] > 0) & (cog[0] < 10)  # not the 0-filled border, not a bright target
        ratio = cog[0][keep] / truth[0][keep]
        assert abs(np.median(ratio) - 1) < 0.05  # speckle: mean-one multiplicative noise
        cog_s, truth_s = _centres_vs_truth(it.assets["vv"].href, "s1", n=3000, band=0, shift=0.5)
        keep_s = (cog_s[0] > 0) & (cog_s[0] < 10)
        spread = np.std(np.log(ratio))
        assert np.std(np.log(cog_s[0][keep_s] / truth_s[0][keep_s])) > spread * 1.03
    assert grids["ascending"].c % 10 == 0 and grids["descending"].c % 10 == 5  # half-pixel grid
    # PC's irregularities: the ascending pass has a 0-filled west border under its -32768 tag (both
    # polarisations); times in PC's "YYYY-MM-DD hh:mm:ss.ff+00:00" form; .rtc.tiff files; no `updated`.
    for state, it in by_state.items():
        with rasterio.open(it.assets["vv"].href) as vv_ds, rasterio.open(it.assets["vh"].href) as vh_ds:
            zero = (vv_ds.read(1) == 0) & (vh_ds.read(1) == 0)
            border = int(round(world.config.s1_zero_border * vv_ds.width))
            assert vv_ds.nodata == -32768 and vh_ds.nodata == -32768
        if state == "ascending":
            assert zero[:, :border].all() and not zero[:, border:].any()
        else:
            assert not zero.any()
        assert it.assets["vv"].href.endswith("/measurement/iw-vv.rtc.tiff")
        assert "updated" not in it.properties
    # The item files write start/end as PC does (rustac serves them normalised to "...T...Z").
    for f in json.loads((world_dir / "catalog" / "sentinel-1-rtc-items.json").read_text())["features"]:
        start = f["properties"]["start_datetime"]
        assert start[10] == " " and start.endswith(".22+00:00")
    # Exactly one item (the ascending pass) carries a stale proj:transform; the file is right.
    asc, desc = by_state["ascending"], by_state["descending"]
    assert asc.properties["proj:transform"][:6] != pytest.approx(list(grids["ascending"])[:6])
    assert desc.properties["proj:transform"][:6] == pytest.approx(list(grids["descending"])[:6])


def test_naip_years_footprints_and_truth(world):
    items = search(world, "naip", datetime="2019-01-01/2023-12-31")
    years = {i.properties["naip:year"] for i in items}
    assert years == {"2020", "2022", "2023"} and all(isinstance(y, str) for y in years)
    assert {_epsg(i) for i in items} == {26913, 26914}
    assert {_epsg(i) for i in items if i.properties["naip:year"] == "2022"} == {26913, 26914}  # one state-year, two zones
    assert all(i.properties["naip:state"] == "tx" for i in items)
    assert {i.properties["naip:year"]: i.properties["gsd"] for i in items} == {"2020": 0.6, "2022": 0.6, "2023": 0.3}
    (fine,) = [i for i in items if i.properties["naip:year"] == "2023"]
    with rasterio.open(fine.assets["image"].href) as ds:
        assert ds.res == (0.3, 0.3) and ds.nodata is None
        img = ds.read(out_shape=(4, ds.height // 8, ds.width // 8))
    black = (img == 0).all(axis=0)
    assert black[0, 0] and not black[-1, -1] and 0.15 < black.mean() < 0.2  # a collar in one corner (18 %), untagged
    newest = [i for i in items if i.properties["naip:year"] == "2022"]
    from shapely.geometry import shape
    from shapely.ops import unary_union

    union = unary_union([shape(i.geometry) for i in newest])
    from shapely.geometry import box

    assert union.contains(box(*world.bbox))  # the newest year covers the world
    overlaps = [shape(a.geometry).intersection(shape(b.geometry)).area for a in newest for b in newest if a.id < b.id]
    assert sum(a > 0 for a in overlaps) >= 4  # quarter-quad-like footprints overlap
    item = next(i for i in newest if _epsg(i) == 26914)
    asset = item.assets["image"]
    with rasterio.open(asset.href) as ds:
        assert ds.count == 4 and ds.res == (0.6, 0.6) and ds.overviews(1)
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
    cog, truth = _centres_vs_truth(asset.href, "naip")  # NAD83 read as WGS84, like PROJ offline
    err = np.abs(cog - truth)
    assert err.mean() < 0.6 and err.max() <= 1.5
    cog_s, truth_s = _centres_vs_truth(asset.href, "naip", shift=0.25)
    assert np.abs(cog_s - truth_s).mean() > 3 * err.mean()


@pytest.mark.parametrize(
    "layer,coll,key,z",
    [("s2", "sentinel-2-l2a", "visual", 15), ("s2", "sentinel-2-l2a", "visual", 16), ("naip", "naip", "image", 17), ("naip", "naip", "image", 18), ("s1", "sentinel-1-rtc", "vv", 15)],
)
def test_render_truth_matches_reprojected_cog(world_dir, layer, coll, key, z):
    """An ideal aligned tile = the sensor raster warped to EPSG:3857: same content, no shift.

    S1 is compared through its speckle-free render on the COG's own grid: speckle is white at
    10 m and would dominate a single tile's shift estimate (aggregate many tiles instead).
    """
    from scale_alibi.devworld import DEFAULT_WORLD
    from scale_alibi.devworld.raster import render_sensor
    from scale_alibi.devworld.truth import truth_of

    feats = json.loads((world_dir / "catalog" / f"{coll}-items.json").read_text())["features"]
    item = next(f for f in feats if f["properties"]["proj:epsg"] % 100 == 13 and f["properties"].get("eo:cloud_cover", 0) < 1)
    href = world_dir / "files" / item["assets"][key]["href"].split("/", 1)[1]
    t = mercantile.tile(-102.012, 35.209, z)
    b = mercantile.xy_bounds(t)
    truth = render_truth(layer, z, t.x, t.y)
    assert truth.shape == ({"s2": 3, "s1": 2, "naip": 4}[layer], 256, 256) and truth.dtype == np.float32
    dst = np.zeros(truth.shape, np.float32)
    with rasterio.open(href) as ds:
        src = ds.read().astype(np.float32)
        if layer == "s1":
            src = render_sensor(truth_of(DEFAULT_WORLD), "s1", ds.crs, ds.transform, ds.height, ds.width)[:1]
            dst, truth = dst[:1], truth[:1]
        px = (b.right - b.left) / 256
        reproject(src, dst, src_transform=ds.transform, src_crs=ds.crs, dst_transform=Affine(px, 0, b.left, 0, -px, b.top), dst_crs="EPSG:3857", resampling=Resampling.bilinear)
    a, c = (np.log(dst[0]), np.log(truth[0])) if layer == "s1" else (dst[0], truth[0])
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.98
    fmax = band_limit(layer, z, 35.2)  # the sensor's band limit, in cycles per output pixel
    gsd = {"s2": 10.0, "s1": 10.0, "naip": 0.6}[layer]
    assert fmax == pytest.approx(min(0.5, px * np.cos(np.radians(35.2)) / gsd / 2.5))
    shift = phase_shift(a, c, fmax)
    assert abs(shift[0]) < 0.1 and abs(shift[1]) < 0.1  # the build's own criterion
    # ...and the check is sensitive: a one-pixel offset is found as one pixel.
    moved = phase_shift(np.roll(a, 1, axis=1), c, fmax)
    assert abs(moved[1] - 1) < 0.1


def test_render_truth_rejects_unknown_layer():
    with pytest.raises(ValueError):
        render_truth("landsat", 15, 0, 0)


# -- the file server ----------------------------------------------------------------------------

def test_exactly_one_stale_proj_transform(world_dir):
    """Every item's proj:transform/shape matches its file, except one S1 item (as on PC)."""
    stale = []
    for coll in ("sentinel-2-l2a", "sentinel-1-rtc", "naip"):
        for f in json.loads((world_dir / "catalog" / f"{coll}-items.json").read_text())["features"]:
            for key, asset in f["assets"].items():
                meta = asset if "proj:transform" in asset else f["properties"]
                with rasterio.open(world_dir / "files" / asset["href"].split("/", 1)[1]) as ds:
                    assert meta["proj:shape"] == [ds.height, ds.width]
                    if meta["proj:transform"][:6] != pytest.approx(list(ds.transform)[:6]):
                        stale.append((f["id"], key))
    assert len({i for i, _ in stale}) == 1 and stale[0][0].startswith("S1")
