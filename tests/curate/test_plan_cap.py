"""Planning is capped: an area covering more than --max-tiles tiles (default MAX_TILES) is refused by
`curate plan` and `curate build` with one line giving its size and the option, fast and in bounded
memory (the count stops at the cap), before a build writes or contacts anything."""

from __future__ import annotations

import json
import time

import mercantile
from click.testing import CliRunner
from shapely.geometry import box, mapping

from scale_alibi.cli.main import main
from scale_alibi.curate.plan import MAX_TILES
from tests.memory_cap import address_space_capped

WORLD = "-179,-80,179,80"


def curate(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, *mentions: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (result.exit_code, result.stderr[-2000:])
    for m in mentions:
        assert m in lines[0], lines[0]
    return lines[0]


def test_a_build_of_the_world_at_zoom_21_is_refused_fast_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    with address_space_capped(256 << 20):
        result = curate("build", "--bbox", WORLD, "--zoom", "21", "--out", out, "--catalog", "http://127.0.0.1:9/",
                        "--no-progress")
    elapsed_s = time.monotonic() - started
    # The box's area in zoom-21 tiles, by hand: columns times mercator rows.
    columns = 358 / 360 * 2**21
    rows = mercantile.tile(0, -80, 21).y - mercantile.tile(0, 80, 21).y
    line = one_error_line(result, f"covers over {MAX_TILES:,} tiles at zoom 21", "--max-tiles")
    about = int(line.split("(about ")[1].split(")")[0].replace(",", ""))
    assert abs(about - columns * rows) / (columns * rows) < 1e-3
    assert elapsed_s < 10, elapsed_s
    assert not out.exists()


def test_plan_refuses_past_max_tiles_and_counts_exactly_up_to_it(tmp_path):
    # A region of a known tile count: a box of whole zoom-12 tiles, counted by mercantile.
    west, south, east, north = -66.5, 17.9, -65.2, 18.6
    tiles = list(mercantile.tiles(west, south, east, north, 12))
    region = box(mercantile.bounds(min(t.x for t in tiles), 0, 12).west,
                 mercantile.bounds(0, max(t.y for t in tiles), 12).south,
                 mercantile.bounds(max(t.x for t in tiles), 0, 12).east,
                 mercantile.bounds(0, min(t.y for t in tiles), 12).north)
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(region)}))
    n = len(tiles)
    ok = curate("plan", "--region", path, "--zoom", "12", "--json", "--max-tiles", n)
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["tiles"] == n
    line = one_error_line(curate("plan", "--region", path, "--zoom", "12", "--max-tiles", n - 1),
                          f"covers over {n - 1:,} tiles at zoom 12 (about {n:,})", "--max-tiles")
    assert str(path) in line
    one_error_line(curate("plan", "--release", "full", "--max-tiles", 1000), "release full covers over 1,000 tiles")
    one_error_line(curate("plan", "--region", path, "--zoom", "12", "--max-tiles", 0), "--max-tiles")


def test_plan_of_the_world_at_zoom_21_is_refused_fast_in_bounded_memory(tmp_path):
    path = tmp_path / "world.geojson"
    w, s, e, n = (float(v) for v in WORLD.split(","))
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [mapping(box(w, s, e, n))["coordinates"][0]]}))
    started = time.monotonic()
    with address_space_capped(256 << 20):
        result = curate("plan", "--region", path, "--zoom", "21")
    assert time.monotonic() - started < 10
    one_error_line(result, f"covers over {MAX_TILES:,} tiles at zoom 21", "--max-tiles")


def test_a_build_under_the_cap_is_not_refused_by_it(tmp_path):
    """The cap refuses only what exceeds it: --max-tiles raised past the count lets the build reach the catalog."""
    bbox = "-66.2,18.2,-66.1,18.3"
    z = 15
    count = len(list(mercantile.tiles(*(float(v) for v in bbox.split(",")), z)))
    refused = curate("build", "--bbox", bbox, "--zoom", z, "--out", tmp_path / "a", "--catalog", "http://127.0.0.1:9/",
                     "--max-tiles", count // 2, "--no-progress")
    one_error_line(refused, f"covers over {count // 2:,} tiles")
    reached = curate("build", "--bbox", bbox, "--zoom", z, "--out", tmp_path / "b", "--catalog", "http://127.0.0.1:9/",
                     "--max-tiles", count, "--timeout", "1", "--no-progress")
    assert reached.exit_code == 2 and "covers over" not in reached.stderr and "127.0.0.1:9" in reached.stderr
