"""Scene selection on hand-made items: mosaic groups, their fill order, footprints and per-tile ranking."""

from __future__ import annotations

from datetime import datetime, timezone

from scale_alibi.curate.scene import Scene, parse_scene
from scale_alibi.curate.selection import (
    Group,
    footprint,
    group_key,
    groups_touching,
    make_groups,
    rank_by_gap,
    rank_naip,
)


def item(id_: str, layer: str, when: str, bbox=(0.0, 0.0, 1.0, 1.0), geometry=None, **props) -> Scene:
    """A STAC item parsed as `search` hands it to selection."""
    return parse_scene({"id": id_, "collection": "c", "bbox": list(bbox), "geometry": geometry,
                        "properties": {"datetime": when, **props}, "assets": {}}, layer, ())


def ids(group: Group) -> list[str]:
    return [it.id for it in group.items]


def test_s2_items_are_grouped_by_their_utc_day():
    assert group_key(item("a", "s2", "2022-06-01T10:30:00Z")) == "s2/2022-06-01"
    assert group_key(item("b", "s2", "2022-06-01T23:59:59Z")) == "s2/2022-06-01"
    # 23:30 at UTC-02:00 is 01:30 UTC the next day; a naive time is taken as UTC.
    assert group_key(item("c", "s2", "2022-06-01T23:30:00-02:00")) == "s2/2022-06-02"
    assert group_key(item("d", "s2", "2022-06-01T00:10:00")) == "s2/2022-06-01"


def test_s1_items_are_grouped_by_day_orbit_direction_and_relative_orbit():
    key = group_key(item("a", "s1", "2022-06-01T05:00:00Z", **{"sat:orbit_state": "ascending",
                                                                "sat:relative_orbit": 34}))
    assert key == "s1/2022-06-01/ascending/34"
    assert group_key(item("b", "s1", "2022-06-01T05:00:00Z")) == "s1/2022-06-01/?/?"


def test_naip_items_are_grouped_by_year_and_state_and_the_year_falls_back_to_the_date():
    assert group_key(item("a", "naip", "2021-08-03T00:00:00Z", **{"naip:year": "2020", "naip:state": "ks"})) \
        == "naip/2020/ks"
    assert group_key(item("b", "naip", "2019-08-03T00:00:00Z")) == "naip/2019/?"


def test_groups_hold_items_in_fill_order_least_cloud_then_id_and_come_sorted_by_key():
    items = [
        item("z-clear", "s2", "2022-06-01T10:00:00Z", **{"eo:cloud_cover": 1.0}),
        item("b-cloudy", "s2", "2022-06-01T10:00:05Z", **{"eo:cloud_cover": 12.5}),
        item("a-clear", "s2", "2022-06-01T10:00:10Z", **{"eo:cloud_cover": 1.0}),
        item("early", "s2", "2022-05-20T10:00:00Z", **{"eo:cloud_cover": 3.0}),
        item("no-cloud-value", "s2", "2022-06-01T10:00:15Z"),  # counts as 0 % when ordering
    ]
    groups = make_groups(items)
    assert [g.key for g in groups] == ["s2/2022-05-20", "s2/2022-06-01"]
    assert ids(groups[0]) == ["early"]
    assert ids(groups[1]) == ["no-cloud-value", "a-clear", "z-clear", "b-cloudy"]
    assert all(g.layer == "s2" for g in groups)


def test_a_groups_time_is_its_earliest_item_and_its_cloud_cover_its_cloudiest():
    g = Group("s2/2022-06-01", "s2", [
        item("a", "s2", "2022-06-01T10:00:20Z", **{"eo:cloud_cover": 4.0}),
        item("b", "s2", "2022-06-01T10:00:00Z", **{"eo:cloud_cover": "17.5"}),
        item("c", "s2", "2022-06-01T10:00:10Z"),
    ])
    assert g.datetime == datetime(2022, 6, 1, 10, 0, 0, tzinfo=timezone.utc)
    assert g.cloud_cover == 17.5
    assert Group("s1/x", "s1", [item("s", "s1", "2022-06-01T00:00:00Z")]).cloud_cover is None


def test_footprint_is_the_geometry_when_there_is_one_else_the_bbox():
    triangle = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [0, 2], [0, 0]]]}
    assert footprint(item("t", "s2", "2022-06-01T00:00:00Z", geometry=triangle)).area == 2.0
    assert footprint(item("b", "s2", "2022-06-01T00:00:00Z", bbox=(1, 2, 4, 6))).bounds == (1, 2, 4, 6)


def test_groups_touching_keeps_only_the_items_whose_footprint_meets_the_area():
    # A triangle over (0,0)-(2,2) below the diagonal x + y = 2: its bbox meets (1.5,1.5)-(3,3) but it does not.
    triangle = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [0, 2], [0, 0]]]}
    day = "2022-06-01T10:00:00Z"
    groups = make_groups([
        item("inside", "s2", day, bbox=(2.5, 2.5, 4, 4)),
        item("triangle", "s2", day, geometry=triangle, bbox=(0, 0, 2, 2)),
        item("other-day", "s2", "2022-06-02T10:00:00Z", bbox=(0, 0, 1, 1)),
    ])
    touching = groups_touching(groups, (1.5, 1.5, 3.0, 3.0))
    assert [(g.key, ids(g)) for g in touching] == [("s2/2022-06-01", ["inside"])]
    assert ids(groups[0]) == ["inside", "triangle"]  # the input groups are left whole


def test_naip_ranks_newest_capture_first():
    groups = make_groups([
        item("n19", "naip", "2019-07-01T00:00:00Z", **{"naip:year": "2019", "naip:state": "ks"}),
        item("n21", "naip", "2021-07-01T00:00:00Z", **{"naip:year": "2021", "naip:state": "ks"}),
        item("n17", "naip", "2017-07-01T00:00:00Z", **{"naip:year": "2017", "naip:state": "ks"}),
    ])
    assert [g.key for g in rank_naip(groups)] == ["naip/2021/ks", "naip/2019/ks", "naip/2017/ks"]


def test_gap_ranking_takes_the_closest_day_first_and_drops_days_beyond_the_limit():
    anchor = datetime(2022, 6, 15, tzinfo=timezone.utc)
    groups = make_groups([
        item("d-10", "s2", "2022-06-05T00:00:00Z", **{"eo:cloud_cover": 0.0}),  # 10 days before
        item("d+3", "s2", "2022-06-18T00:00:00Z", **{"eo:cloud_cover": 19.0}),  # 3 days after
        item("d-40", "s2", "2022-05-06T00:00:00Z", **{"eo:cloud_cover": 0.0}),  # 40 days before
        item("d+31", "s2", "2022-07-16T00:00:00Z", **{"eo:cloud_cover": 0.0}),  # 31 days after
    ])
    ranked = rank_by_gap(groups, anchor, max_gap_days=31)
    assert [ids(g) for g in ranked] == [["d+3"], ["d-10"], ["d+31"]]  # 31 days is within, 40 is not
    assert [ids(g) for g in rank_by_gap(groups, anchor, max_gap_days=2)] == []


def test_equal_gaps_rank_by_cloud_cover_then_by_key():
    anchor = datetime(2022, 6, 15, tzinfo=timezone.utc)
    groups = make_groups([
        item("before-cloudy", "s2", "2022-06-10T00:00:00Z", **{"eo:cloud_cover": 9.0}),  # 5 days, 9 %
        item("after-clear", "s2", "2022-06-20T00:00:00Z", **{"eo:cloud_cover": 2.0}),  # 5 days, 2 %
        item("s1-asc", "s1", "2022-06-20T00:00:00Z", **{"sat:orbit_state": "ascending", "sat:relative_orbit": 1}),
        item("s1-desc", "s1", "2022-06-10T00:00:00Z", **{"sat:orbit_state": "descending", "sat:relative_orbit": 1}),
    ])
    s2 = [g for g in groups if g.layer == "s2"]
    s1 = [g for g in groups if g.layer == "s1"]
    assert [ids(g) for g in rank_by_gap(s2, anchor)] == [["after-clear"], ["before-cloudy"]]
    # S1 has no cloud cover: equal gaps fall to the key, and "s1/2022-06-10/..." sorts first.
    assert [ids(g) for g in rank_by_gap(s1, anchor)] == [["s1-desc"], ["s1-asc"]]
