"""Named outlines and the small / full / micro releases: the rules issue 3 sets for them."""

from __future__ import annotations

import json

import pytest
import shapely
from shapely.geometry import Point, box

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import SPLITS
from scale_alibi.curate.plan import count_tiles, iter_tiles
from scale_alibi.regions import RELEASES, load_region, load_release

PAPER = {"small": (15, 21_497), "full": (15, 146_502), "micro": (17, 188_060)}  # Table 1


def test_conus_is_the_lower_48_outline_not_a_box():
    conus = load_region("conus")
    assert conus.geom_type == "Polygon"
    for lon, lat in [(-98.5, 39.5), (-117.4, 47.7), (-80.2, 26.1), (-69.8, 44.3), (-117.2, 32.8)]:
        assert conus.contains(Point(lon, lat)), (lon, lat)  # Kansas, Spokane, Miami, Maine, San Diego
    for lon, lat in [(-150.0, 61.2), (-157.9, 21.3), (-99.1, 19.4), (-79.4, 43.9), (-75.0, 30.0)]:
        assert not conus.contains(Point(lon, lat)), (lon, lat)  # Alaska, Hawaii, Mexico, Toronto, sea
    assert conus.area < 0.75 * box(*conus.bounds).area


def test_puerto_rico():
    pr = load_region("puerto-rico")
    assert pr.contains(Point(-66.5, 18.2))
    assert not load_region("conus").intersects(pr)


def test_unknown_region_and_release_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown region"):
        load_region("alaska")
    with pytest.raises(UserError, match="unknown release"):
        load_release("tiny")
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}))
    with pytest.raises(UserError, match="no area"):
        load_region(bad)


@pytest.mark.parametrize("name", RELEASES)
def test_release_counts_within_10_percent_of_table_1(name):
    spec = load_release(name)
    zoom, samples = PAPER[name]
    assert (spec.zoom, spec.paper_samples) == (zoom, samples)
    total = sum(count_tiles(s.geometry, spec.zoom) for s in spec.subregions)
    assert abs(total - samples) <= 0.10 * samples, total


@pytest.mark.parametrize("name", RELEASES)
def test_release_subregion_rules(name):
    spec = load_release(name)
    counts = {s.name: count_tiles(s.geometry, spec.zoom) for s in spec.subregions}
    total = sum(counts.values())
    assert len(spec.subregions) >= 8
    assert len({s.state for s in spec.subregions if s.state != "PR"}) >= 5
    assert max(counts.values()) <= 0.25 * total, counts
    assert {s.split for s in spec.subregions} == set(SPLITS)
    assert len(counts) == len(spec.subregions)  # names are unique
    conus, pr = load_region("conus"), load_region("puerto-rico")
    for s in spec.subregions:
        assert (pr if s.state == "PR" else conus).contains(s.geometry), s.name


def test_puerto_rico_is_in_a_release():
    assert any(s.state == "PR" for name in RELEASES for s in load_release(name).subregions)


def _dilated_tiles(geometry, zoom):
    """The region's tiles plus their 8 neighbours: what a training tile could 'see' next door."""
    out = set()
    for t in iter_tiles(geometry, zoom):
        out.update((t.x + dx, t.y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
    return out


@pytest.mark.parametrize("name", RELEASES)
def test_train_and_heldout_are_separate_blocks(name):
    spec = load_release(name)
    train = [s.geometry for s in spec.subregions if s.split == "train"]
    heldout = [s.geometry for s in spec.subregions if s.split == "heldout"]
    # Separated by far more than a tile: at least ~1 degree (~100 km) between the two splits.
    assert shapely.union_all(train).distance(shapely.union_all(heldout)) > 1.0
    # No tile is shared by two sub-regions, and no held-out tile touches a training tile.
    seen: set[tuple[int, int]] = set()
    for s in spec.subregions:
        tiles = {(t.x, t.y) for t in iter_tiles(s.geometry, spec.zoom)}
        assert not tiles & seen, s.name
        seen |= tiles
    trained_near = set().union(*(_dilated_tiles(g, spec.zoom) for g in train))
    assert not any((t.x, t.y) in trained_near for g in heldout for t in iter_tiles(g, spec.zoom))


def test_sites_keep_one_split_across_releases():
    # small and micro are cut from the middle of full's sites, so an area held out in one release
    # is held out in all of them and a model trained on one release can be evaluated on another.
    full = {s.name: s for s in load_release("full").subregions}
    for name in ("small", "micro"):
        for s in load_release(name).subregions:
            assert s.name in full and full[s.name].split == s.split and full[s.name].state == s.state
            assert full[s.name].geometry.contains(s.geometry)
