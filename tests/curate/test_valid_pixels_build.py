"""curate build on the world's Planetary Computer irregularities (a 0-filled S1 border under a
-32768 tag, an untagged black S2 swath edge, SCL 0/1 over valid-looking pixels, a NAIP black collar):
no tile of a release has more than (1 - min_valid) of its pixels invalid by the sensor rules, and
clean scenes of the same ground fill what the irregular ones lack.

The oracle is the tiles' own pixels (black, or S1 at the bottom of both dB ranges) and the
world's configuration (where the SCL defect lies), never the manifest's claims."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from scale_alibi.contract.release import HIRES_CHILDREN, Release
from scale_alibi.curate.encode import decode_png
from scale_alibi.curate.pipeline import build_release

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None, "scheduler": "synchronous"}
MIN_VALID = 0.99  # the build's default


def black_fraction(layer: str, png: bytes) -> float:
    """The share of a tile's pixels that carry no data: all-black RGB, or for S1 both VV and VH at
    the bottom of their dB ranges (what 0 or nodata encodes to)."""
    img = decode_png(png)
    if layer == "s1":
        return float(((img[..., 1] == 0) & (img[..., 2] == 0)).mean())
    return float((img[..., :3] == 0).all(axis=-1).mean())


def worst_tiles(rel: Release) -> dict[str, tuple[float, tuple]]:
    """Per layer (naip_hires: each z+1 child), the largest black fraction of any tile and its address."""
    worst: dict[str, tuple[float, tuple]] = {k: (0.0, ()) for k in ("s1", "s2", "naip", "naip_hires")}
    for row in rel.read_manifest().to_pylist():
        z, x, y = row["z"], row["x"], row["y"]
        tiles = [(layer, (layer, z, x, y)) for layer in ("s1", "s2", "naip")]
        tiles += [("naip_hires", ("naip", z + 1, 2 * x + dx, 2 * y + dy)) for dx, dy in HIRES_CHILDREN]
        for key, (layer, *zxy) in tiles:
            frac = black_fraction(layer, rel.tile_path(layer, *zxy).read_bytes())
            if frac > worst[key][0]:
                worst[key] = (frac, tuple(zxy))
    return worst


def scl_defect_lonlat(world) -> Polygon:
    """The SCL 0/1 disc of the world, in lon/lat, from its configuration."""
    from scale_alibi.devworld.build import SCL_DEFECT_RADIUS_M, scl_defect_centre
    from scale_alibi.devworld.truth import truth_of

    truth = truth_of(world.config)
    cx, cy = scl_defect_centre(world.config, truth)
    a = np.linspace(0, 2 * np.pi, 73)[:-1]
    lon, lat = truth.to_lonlat(cx + SCL_DEFECT_RADIUS_M * np.cos(a), cy + SCL_DEFECT_RADIUS_M * np.sin(a))
    return Polygon(zip(lon, lat))


@pytest.fixture(scope="module")
def late_z15(world, tmp_path_factory):
    """z15 restricted to dates after the first S2 date: S2 comes from the date whose east-zone visual
    has an untagged black swath edge."""
    cfg = world.config
    root = tmp_path_factory.mktemp("late")
    build_release(root, zoom=15, region=box(*world.bbox), release="late", catalog=world.stac_url,
                  datetime=f"2023-06-08/{max(cfg.s2_dates)}", **QUIET)
    return Release(root, "late")


def test_no_tile_at_z16_has_more_black_than_min_valid_allows(z16):
    rel, _ = z16
    worst = worst_tiles(rel)
    print("\nz16 worst black fraction per layer:", {k: round(v[0], 4) for k, v in worst.items()})
    for layer, (frac, where) in worst.items():
        assert frac <= 1 - MIN_VALID + 1e-9, f"{layer} tile {where}: {frac:.1%} black"


def test_the_s1_border_is_filled_from_the_other_pass(z16, world):
    """Tiles west of the ascending pass's 0-filled border take the descending pass; those east of it
    keep the ascending one (the closer date)."""
    rel, _ = z16
    rows = rel.read_manifest().to_pylist()
    states = {r["s1_orbit_state"] for r in rows}
    assert states == {"ascending", "descending"}
    w, _, e, _ = world.bbox
    inside = [r for r in rows if mercantile.bounds(r["x"], r["y"], r["z"]).east < w + 0.2 * (e - w)]
    assert inside  # tiles wholly inside the border (30 % of the padded scene's width)
    assert {r["s1_orbit_state"] for r in inside} == {"descending"}


def test_s2_over_the_scl_defect_is_filled_from_the_other_scene_of_the_day(z16, world):
    """The disc where the west-zone scene's SCL says 1 (its visual saturated white there) and 0 is
    filled from the same day's east-zone scene: no tile over it shows the white half-disc."""
    rel, _ = z16
    disc = scl_defect_lonlat(world)
    over = []
    for r in rel.read_manifest().to_pylist():
        b = mercantile.bounds(r["x"], r["y"], r["z"])
        tile = box(b.west, b.south, b.east, b.north)
        if tile.intersection(disc).area > (1 - MIN_VALID) * tile.area:
            over.append(r)
    assert over
    white = []
    for r in over:
        img = decode_png(rel.tile_path("s2", r["z"], r["x"], r["y"]).read_bytes())
        white.append(float((img == 255).all(axis=-1).mean()))
        assert r["s2_datetime"].startswith(world.config.s2_scl_defect_date)  # the same day, filled
    print(f"\nz16 tiles over the SCL defect: {len(over)}, white fraction worst {max(white):.4f}")
    assert max(white) <= 1 - MIN_VALID


def test_the_untagged_black_swath_edge_is_never_shipped(late_z15, world):
    rows = late_z15.read_manifest().to_pylist()
    assert rows and {r["s2_datetime"][:10] for r in rows} == {world.config.s2_swath_date}
    worst = worst_tiles(late_z15)
    print("\nlate z15 worst black fraction per layer:", {k: round(v[0], 4) for k, v in worst.items()})
    assert worst["s2"][0] <= 1 - MIN_VALID + 1e-9, worst["s2"]


def test_the_30cm_naip_year_is_used_but_not_its_black_collar(world, tmp_path):
    """z17 over the 0.3 m NAIP footprint (the newest year, preferred): its tiles are cut from it
    where it has data, and from the older 0.6 m year where its untagged collar is black."""
    from tests.world_rows import search

    (fine,) = [i for i in search(world, "naip") if i.properties["naip:year"] == world.config.naip_fine_year]
    area = box(*fine.bbox)
    build_release(tmp_path, zoom=17, region=area, release="fine", catalog=world.stac_url, **QUIET)
    rel = Release(tmp_path, "fine")
    rows = rel.read_manifest().to_pylist()
    years = {r["naip_year"] for r in rows}
    assert world.config.naip_fine_year in years and len(years) >= 2, years
    worst = worst_tiles(rel)
    print("\nz17 over the 0.3 m NAIP: worst black fraction per layer:", {k: round(v[0], 4) for k, v in worst.items()})
    for layer in ("naip", "naip_hires"):
        assert worst[layer][0] <= 1 - MIN_VALID + 1e-9, (layer, worst[layer])


def test_the_content_check_finds_no_constant_tile_in_the_release(z16):
    """`curate verify --content`'s check on the z16 release: none of its tiles is mostly one value
    (before the validity rules it listed the S1 tiles cut from the 0-filled border)."""
    from scale_alibi.curate.content import constant_tiles

    rel, _ = z16
    rows = rel.read_manifest().to_pylist()
    found = constant_tiles(rows, lambda name: (rel.path / name).read_bytes())
    print(f"\nz16 tiles more than half one value: {[(t.path, round(t.fraction, 3)) for t in found]}")
    assert found == []
