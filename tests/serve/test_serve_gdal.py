"""GDAL reads layers from the running server through its TMS (XYZ) driver: the mosaic equals the PNGs on disk."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from tests.release_factory import X0, Y0, Z
from tests.serve_fixtures import shared_data_dir, shared_server

NX, NY = 4, 3  # the factory's default grid of the `small` release

WMS = """<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{url}/tiles/small/{layer}/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>-20037508.342789244</UpperLeftX><UpperLeftY>20037508.342789244</UpperLeftY>
    <LowerRightX>20037508.342789244</LowerRightX><LowerRightY>-20037508.342789244</LowerRightY>
    <TileLevel>{level}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY><YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>3</BandsCount>
  <MaxConnections>4</MaxConnections>
</GDAL_WMS>"""


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def disk_mosaic(release, layer: str, z: int, x0: int, y0: int, nx: int, ny: int) -> np.ndarray:
    rows = []
    for y in range(y0, y0 + ny):
        rows.append(np.concatenate(
            [np.asarray(Image.open(release.tile_path(layer, z, x, y)).convert("RGB")) for x in range(x0, x0 + nx)], axis=1))
    return np.concatenate(rows, axis=0).transpose(2, 0, 1)


@pytest.mark.parametrize("layer,level,x0,y0,nx,ny", [
    ("s2", Z, X0, Y0, NX, NY),
    ("s1", Z, X0, Y0, NX, NY),
    ("naip", Z + 1, 2 * X0, 2 * Y0, 2 * NX, 2 * NY),  # the z+1 NAIP children form the same area at 2x
])
def test_gdal_tms_mosaic_equals_tiles_on_disk(tmp_path, layer, level, x0, y0, nx, ny):
    server = shared_server()
    data = shared_data_dir()
    xml = tmp_path / f"{layer}.xml"
    xml.write_text(WMS.format(url=server.url, layer=layer, level=level))
    with rasterio.Env(GDAL_HTTP_TIMEOUT=20, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(xml) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.width == 256 * 2**level
        got = ds.read(window=Window(x0 * 256, y0 * 256, nx * 256, ny * 256))
    np.testing.assert_array_equal(got, disk_mosaic(data.small, layer, level, x0, y0, nx, ny))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_gdal_vsicurl_reads_one_tile_with_ranges():
    server = shared_server()
    data = shared_data_dir()
    path = data.small.tile_path("s2", Z, X0, Y0)
    with rasterio.Env(CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".png", GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f"/vsicurl/{server.url}/tiles/small/s2/{Z}/{X0}/{Y0}.png") as ds:
            got = ds.read()
    np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
