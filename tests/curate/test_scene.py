"""The typed scene: real recorded Planetary Computer items (tests/data/planetary-computer) and the
forms of time, year, orbit and nodata that PC's catalog mixes, parsed once into a frozen Scene."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scale_alibi.curate.scene import Scene, parse_scene, parse_time
from scale_alibi.curate.search import SENSORS, SearchOptions, keep_item, to_scene
from scale_alibi.curate.selection import group_key

PC = Path(__file__).parent.parent / "data" / "planetary-computer"
UTC = timezone.utc


def recorded(name: str) -> list[dict]:
    return json.loads((PC / f"{name}.json").read_text())


@pytest.mark.parametrize("text, want", [
    ("2024-04-19T04:59:10.436706Z", datetime(2024, 4, 19, 4, 59, 10, 436706, tzinfo=UTC)),
    ("2024-04-19 04:59:04.22+00:00", datetime(2024, 4, 19, 4, 59, 4, 220000, tzinfo=UTC)),  # PC's S1 start
    ("2024-04-19t04:59:04z", datetime(2024, 4, 19, 4, 59, 4, tzinfo=UTC)),
    ("2024-04-19T04:59:04.123456789Z", datetime(2024, 4, 19, 4, 59, 4, 123456, tzinfo=UTC)),  # nanoseconds
    ("2024-04-18T23:30:00-0530", datetime(2024, 4, 19, 5, 0, tzinfo=UTC)),  # offset without a colon
    ("2024-04-19T04:59:04", datetime(2024, 4, 19, 4, 59, 4, tzinfo=UTC)),  # no zone: UTC
    ("2024-04-19", datetime(2024, 4, 19, tzinfo=UTC)),
])
def test_times_in_every_rfc3339_form_parse_to_the_same_utc_instant(text, want):
    assert parse_time(text) == want


@pytest.mark.parametrize("bad", ["19/04/2024", "2024-04-19T25:00:00Z", "yesterday", ""])
def test_a_time_that_is_no_rfc3339_is_a_value_error(bad):
    with pytest.raises(ValueError):
        parse_time(bad)


def test_a_recorded_sentinel1_rtc_item():
    (item,) = recorded("sentinel-1-rtc")
    scene = parse_scene(item, "s1", SENSORS["s1"].assets)
    assert scene.id == "S1A_IW_GRDH_1SDV_20240419T045904_20240419T045916_053498_067DF2_rtc"
    assert scene.collection == "sentinel-1-rtc" and scene.layer == "s1"
    assert scene.datetime == datetime(2024, 4, 19, 4, 59, 10, 436706, tzinfo=UTC)
    assert scene.orbit_state == "descending" and scene.relative_orbit == 51 and scene.instrument_mode == "IW"
    assert scene.href("vv").endswith("/measurement/iw-vv.rtc.tiff") and scene.href("vh").endswith("iw-vh.rtc.tiff")
    assert scene.asset("vv").nodata == -32768 and scene.asset("vh").nodata == -32768  # raster:bands
    assert scene.updated is None and scene.requires_account is False  # the account flag is the collection's
    assert group_key(scene) == "s1/2024-04-19/descending/51"
    assert keep_item(scene, SearchOptions(datetime="2024-04-19")) and not keep_item(scene, SearchOptions(s1_mode="EW"))
    # PC's datetime can be null beside start/end in its space-and-offset form: the start is used.
    no_dt = {**item, "properties": {**item["properties"], "datetime": None}}
    assert parse_scene(no_dt, "s1", ("vv", "vh")).datetime == datetime(2024, 4, 19, 4, 59, 4, 220006, tzinfo=UTC)


def test_a_recorded_sentinel2_item_has_no_declared_visual_nodata():
    (item,) = recorded("sentinel-2-l2a")
    scene = parse_scene(item, "s2", SENSORS["s2"].assets)
    assert scene.datetime == datetime(2024, 4, 19, 9, 55, 49, 24000, tzinfo=UTC)
    assert scene.mgrs_tile == "47XML" and scene.cloud_cover == pytest.approx(0.219774)
    assert [k for k, _ in scene.assets] == ["visual", "SCL"]  # B04, AOT, ... are not read
    assert scene.asset("visual").nodata is None  # no raster:bands: only the file's tag can say
    assert scene.gsd == 10.0  # no item gsd: the first read asset's
    assert scene.footprint.bounds == pytest.approx(tuple(item["bbox"]))
    assert keep_item(scene, SearchOptions(max_cloud=0.3)) and not keep_item(scene, SearchOptions(max_cloud=0.2))


def test_recorded_naip_items_have_a_string_year_and_a_30cm_gsd():
    items = recorded("naip")
    scenes = [parse_scene(it, "naip", SENSORS["naip"].assets) for it in items]
    assert {s.naip_year for s in scenes} == {2022} and all(isinstance(s.naip_year, int) for s in scenes)
    assert {s.gsd for s in scenes} == {0.3} and {s.naip_state for s in scenes} == {"pr"}
    assert {group_key(s) for s in scenes} == {"naip/2022/pr"}
    assert keep_item(scenes[0], SearchOptions(naip_years=(2022, 2022)))
    assert not keep_item(scenes[0], SearchOptions(naip_years=(2020, 2021)))


def test_nodata_falls_back_to_the_collections_item_assets():
    (item,) = recorded("sentinel-1-rtc")
    bare = json.loads(json.dumps(item))
    for asset in bare["assets"].values():
        asset.pop("raster:bands", None)
    collection = {"id": "sentinel-1-rtc", "msft:requires_account": True,
                  "item_assets": {"vv": {"raster:bands": [{"nodata": -32768}]}, "vh": {"raster:bands": [{"nodata": "nan"}]}}}
    assert parse_scene(bare, "s1", ("vv", "vh")).asset("vv").nodata is None
    scene = parse_scene(bare, "s1", ("vv", "vh"), collection)
    assert scene.asset("vv").nodata == -32768 and math.isnan(scene.asset("vh").nodata)
    assert scene.requires_account is True


def test_a_scene_is_frozen_and_travels_to_workers():
    (item,) = recorded("sentinel-1-rtc")
    scene = parse_scene(item, "s1", ("vv", "vh"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        scene.id = "other"  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(scene))
    assert isinstance(back, Scene) and back == scene


def test_an_item_without_any_time_is_skipped_not_a_crash():
    (item,) = recorded("sentinel-2-l2a")
    timeless = {**item, "properties": {k: v for k, v in item["properties"].items() if k != "datetime"}}
    assert to_scene(timeless, SENSORS["s2"]) is None
    assert to_scene(item, SENSORS["s2"]) is not None
