"""Tile enumeration (exact at edges, streamed) and the `curate plan` command."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import types
from pathlib import Path

import mercantile
import pytest
import shapely
from click.testing import CliRunner
from shapely.geometry import MultiPolygon, Polygon, box

from scale_alibi.cli.main import main as cli
from scale_alibi.contract.errors import UserError
from scale_alibi.curate.plan import count_tiles, iter_tiles
from scale_alibi.regions import load_region, load_release
from tests.stac_server import free_port, serve_items

ROOT = Path(__file__).resolve().parents[2]
Z = 12
X0, Y0 = 1205, 1540  # an arbitrary mid-latitude tile (Kansas); hand cases are relative to it


def corner(dx: int, dy: int) -> tuple[float, float]:
    """Lon/lat of the upper-left corner of tile (X0 + dx, Y0 + dy)."""
    ul = mercantile.ul(X0 + dx, Y0 + dy, Z)
    return ul.lng, ul.lat


def point(fx: float, fy: float) -> tuple[float, float]:
    """Lon/lat at fractional tile position (X0 + fx, Y0 + fy), linear inside the tile's box."""
    dx, dy = int(fx), int(fy)
    w, s, e, n = mercantile.bounds(X0 + dx, Y0 + dy, Z)
    return w + (fx - dx) * (e - w), n - (fy - dy) * (n - s)


def rel(tiles) -> set[tuple[int, int]]:
    return {(t.x - X0, t.y - Y0) for t in tiles}


def block(dx0: int, dy0: int, dx1: int, dy1: int) -> Polygon:
    """The box exactly covering tiles dx0..dx1-1, dy0..dy1-1 (edges on tile boundaries)."""
    (w, n), (e, s) = corner(dx0, dy0), corner(dx1, dy1)
    return box(w, s, e, n)


def test_hand_checked_triangle():
    # Vertices at tile centres (0.5, 0.5), (3.5, 0.5), (0.5, 2.5). The long edge crosses the
    # row 0/1 boundary at x ~ 2.75 and the row 1/2 boundary at x ~ 1.25 (rows are of almost equal
    # height here), so row 0 has tiles 0-3, row 1 tiles 0-2 and row 2 tiles 0-1.
    tri = Polygon([point(0.5, 0.5), point(3.5, 0.5), point(0.5, 2.5)])
    expected = {(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2)}
    assert rel(iter_tiles(tri, Z)) == expected
    assert count_tiles(tri, Z) == 9


def test_edges_on_tile_boundaries_do_not_pull_in_neighbours():
    assert rel(iter_tiles(block(0, 0, 1, 1), Z)) == {(0, 0)}  # one tile's own box: that tile only
    assert rel(iter_tiles(block(1, 1, 3, 4), Z)) == {(x, y) for x in (1, 2) for y in (1, 2, 3)}
    # A triangle inside tile (1, 1) with a vertex on its NW corner and an edge on its west side:
    # the three tiles meeting that corner and the west neighbour only touch it.
    tri = Polygon([corner(1, 1), point(1.0, 1.9), point(1.6, 1.5)])
    assert rel(iter_tiles(tri, Z)) == {(1, 1)}
    # A triangle whose vertex pokes just over that corner into the diagonal neighbour (0, 0):
    # its edges cross x = 1 at y ~ 1.02 and ~ 0.99 and y = 1 at x ~ 0.98 and ~ 1.02, so it takes
    # all four tiles around the corner.
    poke = Polygon([point(1.5, 1.5), point(0.95, 0.97), point(1.5, 1.2)])
    assert rel(iter_tiles(poke, Z)) == {(1, 1), (0, 0), (1, 0), (0, 1)}


def test_holes_and_multipolygons():
    ring = block(0, 0, 5, 5).difference(block(1, 1, 4, 4))  # 5x5 tiles less the inner 3x3
    assert rel(iter_tiles(ring, Z)) == {(x, y) for x in range(5) for y in range(5)} - {
        (x, y) for x in range(1, 4) for y in range(1, 4)
    }
    # Two parts in the same tile count it once; a part far away adds its own tile.
    parts = MultiPolygon([box(*point(0.1, 0.6), *point(0.3, 0.4)), box(*point(0.6, 0.6), *point(0.8, 0.4)),
                          box(*point(7.2, 3.8), *point(7.4, 3.6))])
    assert rel(iter_tiles(parts, Z)) == {(0, 0), (7, 3)}
    assert count_tiles(parts, Z) == 2


def _brute(geometry, zoom: int = Z, origin: tuple[int, int] = (X0, Y0)) -> set[tuple[int, int]]:
    """Reference: every tile in the bounding box whose interior meets the region's (shapely)."""
    w, s, e, n = geometry.bounds
    out = set()
    for t in mercantile.tiles(w - 1e-9, s - 1e-9, e + 1e-9, n + 1e-9, [zoom]):
        b = box(*mercantile.bounds(t))
        if b.intersects(geometry) and not b.touches(geometry):
            out.add((t.x - origin[0], t.y - origin[1]))
    return out


def test_matches_brute_force_on_random_polygons():
    rng = random.Random(7)
    for _ in range(40):
        zoom = rng.randint(8, 13)
        cx, cy = rng.uniform(-170, 170), rng.uniform(-75, 75)
        pts = [(cx + rng.uniform(-0.4, 0.4), cy + rng.uniform(-0.3, 0.3)) for _ in range(rng.randint(3, 10))]
        geom = shapely.make_valid(Polygon(pts))
        geom = shapely.union_all([g for g in getattr(geom, "geoms", [geom]) if g.area > 0])
        if geom.is_empty:
            continue
        got = {(t.x, t.y) for t in iter_tiles(geom, zoom)}
        assert got == _brute(geom, zoom, origin=(0, 0))
        assert count_tiles(geom, zoom) == len(got)


def test_iter_tiles_streams_and_orders_rows():
    tiles = iter_tiles(load_region("conus"), 15)
    assert isinstance(tiles, types.GeneratorType)
    first = [next(tiles) for _ in range(1000)]
    assert all(t.z == 15 for t in first)
    assert [(t.y, t.x) for t in first] == sorted((t.y, t.x) for t in first)


@pytest.mark.parametrize("zoom", [-1, 23, 1.5])
def test_zoom_out_of_range(zoom):
    with pytest.raises(UserError, match="zoom"):
        count_tiles(block(0, 0, 1, 1), zoom)


def _json_plan(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["small", "full", "micro"])
def test_plan_release_json(name):
    out = _json_plan("--release", name)
    spec = load_release(name)
    assert out["zoom"] == spec.zoom and out["release"] == name
    assert out["tiles"] == sum(r["tiles"] for r in out["regions"]) == sum(out["splits"].values())
    assert {r["split"] for r in out["regions"]} == {"train", "heldout"}
    assert abs(out["tiles"] - spec.paper_samples) <= 0.10 * spec.paper_samples


def test_plan_region_geojson_file(tmp_path):
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": block(0, 0, 2, 3).__geo_interface__}))
    out = _json_plan("--region", str(path), "--zoom", str(Z))
    assert out["tiles"] == 6 and out["zoom"] == Z and out["regions"][0]["tiles"] == 6
    assert _json_plan("--region", str(path), "--zoom", str(Z + 2))["tiles"] == 6 * 16


def test_plan_conus_z15_subprocess_under_30s():
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from scale_alibi.cli.main import main; main()", "plan", "--region", "conus", "--zoom", "15", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # Lower 48 is ~8.1 million km2; a z15 tile there is ~0.8-1.1 km2.
    assert 7_000_000 < out["tiles"] < 11_000_000
    assert out["zoom"] == 15 and out["regions"][0]["name"] == "conus"
    assert elapsed < 30, f"conus z15 took {elapsed:.1f} s"


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "not-json": "{ this is not json",
        "no-type": json.dumps({"coordinates": [1, 2]}),
        "bad-coords": json.dumps({"type": "Polygon", "coordinates": [[1, 2]]}),
        "a-point": json.dumps({"type": "Point", "coordinates": [-98, 39]}),
        "beyond-mercator": json.dumps({"type": "Polygon", "coordinates": [[[0, 80], [10, 80], [10, 89], [0, 80]]]}),
        "empty-collection": json.dumps({"type": "FeatureCollection", "features": []}),
    }
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name}.geojson"
        out[name].write_text(text)
    return out


@pytest.mark.parametrize("case", ["not-json", "no-type", "bad-coords", "a-point", "beyond-mercator", "empty-collection"])
def test_bad_geojson_exits_2_with_one_line(tmp_path, case):
    result = CliRunner().invoke(cli, ["plan", "--region", str(_bad_files(tmp_path)[case]), "--zoom", "15"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


@pytest.mark.parametrize("args", [
    ["--release", "huge"],
    ["--region", "atlantis", "--zoom", "15"],
    ["--region", "conus", "--zoom", "23"],
    ["--region", "conus", "--zoom", "-1"],
    ["--region", "conus"],
    ["--release", "small", "--zoom", "15"],
    [],
])
def test_bad_arguments_exit_2_with_one_line(args):
    result = CliRunner().invoke(cli, ["plan", *args])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_bad_input_through_the_real_cli():
    proc = subprocess.run(
        [sys.executable, "-c", "from scale_alibi.cli.main import main; main()", "plan", "--release", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: unknown release 'nope': use one of small, full, micro"]


# ------------------------------------------------------------------ --scenes against a real STAC API

@pytest.fixture
def stac_catalog(tmp_path):
    """rustac serve (in-memory) with one S2, S1 and NAIP item over block(0,0,2,2), one S2 item elsewhere,
    and a loopback file server for assets that carry no `file:size` (sized by HEAD)."""
    import functools
    import http.server
    import threading

    files = tmp_path / "files"
    files.mkdir()
    (files / "scl.tif").write_bytes(b"x" * 1234)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    handler.log_message = lambda *a: None
    fileserver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=fileserver.serve_forever, daemon=True).start()
    file_url = f"http://127.0.0.1:{fileserver.server_address[1]}"

    area = block(0, 0, 2, 2)
    far = box(10.0, 10.0, 10.1, 10.1)
    def item(id_, collection, geometry, assets):
        return {"type": "Feature", "stac_version": "1.0.0", "id": id_, "collection": collection,
                "geometry": geometry.__geo_interface__, "bbox": list(geometry.bounds),
                "properties": {"datetime": "2022-06-01T00:00:00Z"}, "links": [], "assets": assets}
    items = [
        item("s2-a", "sentinel-2-l2a", area.buffer(0.01), {
            "visual": {"href": f"{file_url}/visual.tif", "file:size": 1_000_000},
            "SCL": {"href": f"{file_url}/scl.tif"}}),
        item("s2-far", "sentinel-2-l2a", far, {"visual": {"href": f"{file_url}/v.tif", "file:size": 7}}),
        item("s1-a", "sentinel-1-rtc", area.buffer(0.01), {
            "vv": {"href": f"{file_url}/vv.tif", "file:size": 500},
            "vh": {"href": f"{file_url}/missing.tif"}}),
        item("naip-a", "naip", area, {"image": {"href": f"{file_url}/n.tif", "file:size": 40}}),
    ]
    region = tmp_path / "area.geojson"
    region.write_text(json.dumps(area.__geo_interface__))
    try:
        with serve_items(tmp_path, ["sentinel-2-l2a", "sentinel-1-rtc", "naip"], items) as url:
            yield url, region
    finally:
        fileserver.shutdown()


def test_scenes_counts_items_over_the_region_and_bytes(stac_catalog):
    url, region = stac_catalog
    out = _json_plan("--region", str(region), "--zoom", str(Z), "--scenes", "--catalog", url)
    assert out["tiles"] == 4
    s2, s1, naip = out["scenes"]["s2"], out["scenes"]["s1"], out["scenes"]["naip"]
    assert (s2["scenes"], s2["bytes"], s2["assets_unknown_size"]) == (1, 1_000_000 + 1234, 0)  # SCL by HEAD
    assert (s1["scenes"], s1["bytes"], s1["assets_unknown_size"]) == (1, 500, 1)  # vh: 404
    assert (naip["scenes"], naip["bytes"]) == (1, 40)
    assert out["bytes"] == 1_000_000 + 1234 + 500 + 40


def test_scenes_with_unreachable_catalog_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["plan", "--release", "small", "--scenes", "--catalog", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot reach STAC catalog" in result.stderr
