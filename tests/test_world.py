"""The synthetic world: a real STAC API, COGs over HTTP matching the analytic truth, faults, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from curate.world.truth import sample_truth

pystac_client = pytest.importorskip("pystac_client")


def _search(world, collection, **kw):
    client = pystac_client.Client.open(world.stac_url)
    return list(client.search(collections=[collection], bbox=world.bbox, **kw).items())


def _centres_vs_truth(href, layer, n=400, seed=0, shift=0.0):
    """COG values at random interior pixel centres, and the truth there (or shifted by `shift` px)."""
    rng = np.random.default_rng(seed)
    with rasterio.open(href) as ds:
        data = ds.read()
        rows = rng.integers(2, ds.height - 2, n)
        cols = rng.integers(2, ds.width - 2, n)
        xs, ys = ds.transform * (cols + 0.5 + shift, rows + 0.5 + shift)
        lon, lat = warp_transform(ds.crs, "EPSG:4326", list(xs), list(ys))
        nodata = ds.nodata
    vals = data[:, rows, cols].astype(np.float64)
    ok = np.ones(n, bool) if nodata is None else (vals != nodata).all(axis=0)
    truth = sample_truth(layer, np.array(lon), np.array(lat))
    return vals[:, ok], truth[:, ok]


def test_stac_search_and_s2_pixels_match_truth_subpixel(world):
    items = _search(world, "sentinel-2-l2a", datetime="2023-06-01/2023-06-30")
    assert len(items) >= 4
    clear = [i for i in items if i.properties["eo:cloud_cover"] < 20]
    assert 0 < len(clear) < len(items)  # the cloudy date is filtered out client-side
    item = next(i for i in clear if i.properties["s2:nodata_pixel_percentage"] == 0)
    asset = item.assets["visual"]
    assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset.href.startswith(world.files_url + "/")
    cog, truth = _centres_vs_truth(asset.href, "s2")
    err = np.abs(cog - truth)
    assert err.mean() < 0.6 and err.max() <= 1.5  # rounding to uint8, nothing else
    cog_s, truth_s = _centres_vs_truth(asset.href, "s2", shift=0.5)
    assert np.abs(cog_s - truth_s).mean() > 4 * err.mean()  # half a pixel off is clearly visible
