"""STAC search against a real rustac server on loopback with hand-made Planetary-Computer-shaped items."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scale_alibi.contract.errors import UserError
from scale_alibi.curate import search
from scale_alibi.curate.search import SearchOptions, dedupe, parse_interval, search_items
from scale_alibi.devworld.stac_proxy import CatalogProxy
from tests.stac_server import free_port, serve_items

AREA = (-97.2, 38.0, -97.0, 38.2)  # the hand-made items' search box
PAGED = (-90.2, 40.0, -90.0, 40.2)  # a second box holding more S1 items than one page (250)
PAGED_COUNT = 260
JUNE = "2022-06-01/2022-06-30"


def feature(id_: str, collection: str, when: str, assets: tuple[str, ...], bbox=AREA, **props) -> dict:
    w, s, e, n = bbox
    inner = (w + 0.05, s + 0.05, e - 0.05, n - 0.05)  # well inside the box, never on its edge
    ring = [[inner[0], inner[1]], [inner[2], inner[1]], [inner[2], inner[3]], [inner[0], inner[3]], [inner[0], inner[1]]]
    return {"type": "Feature", "stac_version": "1.0.0", "id": id_, "collection": collection,
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": list(inner),
            "properties": {"datetime": when, **props}, "links": [],
            "assets": {k: {"href": f"https://example.test/{id_}/{k}.tif"} for k in assets}}


S2, S1, NAIP = "sentinel-2-l2a", "sentinel-1-rtc", "naip"
ITEMS = [
    feature("s2-clear", S2, "2022-06-10T17:00:00Z", ("visual", "SCL", "B04"), **{"eo:cloud_cover": 5.0}),
    feature("s2-at-the-cloud-limit", S2, "2022-06-11T17:00:00Z", ("visual", "SCL"), **{"eo:cloud_cover": 20.0}),
    feature("s2-cloudy", S2, "2022-06-12T17:00:00Z", ("visual", "SCL"), **{"eo:cloud_cover": 35.0}),
    feature("s2-without-scl", S2, "2022-06-13T17:00:00Z", ("visual",), **{"eo:cloud_cover": 1.0}),
    feature("s2-without-visual", S2, "2022-06-14T17:00:00Z", ("SCL",), **{"eo:cloud_cover": 1.0}),
    feature("s2-without-cloud-cover", S2, "2022-06-15T17:00:00Z", ("visual", "SCL")),
    feature("s2-last-evening-of-june", S2, "2022-06-30T21:00:00Z", ("visual", "SCL"), **{"eo:cloud_cover": 2.0}),
    feature("s2-in-august", S2, "2022-08-01T17:00:00Z", ("visual", "SCL"), **{"eo:cloud_cover": 2.0}),
    feature("s2-elsewhere", S2, "2022-06-10T17:00:00Z", ("visual", "SCL"), bbox=(10.0, 10.0, 10.2, 10.2),
            **{"eo:cloud_cover": 2.0}),
    feature("s1-iw", S1, "2022-06-10T00:30:00Z", ("vv", "vh"), **{"sar:instrument_mode": "IW"}),
    feature("s1-ew", S1, "2022-06-11T00:30:00Z", ("vv", "vh"), **{"sar:instrument_mode": "EW"}),
    feature("s1-without-vh", S1, "2022-06-12T00:30:00Z", ("vv",), **{"sar:instrument_mode": "IW"}),
    feature("s1-without-mode", S1, "2022-06-13T00:30:00Z", ("vv", "vh")),
    feature("naip-2018", NAIP, "2018-07-01T00:00:00Z", ("image",), **{"naip:year": "2018"}),
    feature("naip-2020", NAIP, "2020-07-01T00:00:00Z", ("image",), **{"naip:year": "2020"}),
    feature("naip-2022", NAIP, "2022-07-01T00:00:00Z", ("image",), **{"naip:year": "2022"}),
    feature("naip-dated-2019", NAIP, "2019-07-01T00:00:00Z", ("image",)),  # no naip:year: the date's year
    *[feature(f"s1-paged-{i:03d}", S1, f"2022-06-{1 + i % 28:02d}T00:30:00Z", ("vv", "vh"), bbox=PAGED,
              **{"sar:instrument_mode": "IW"}) for i in reversed(range(PAGED_COUNT))],
]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Iterator[str]:
    """rustac serve (in-memory backend) holding ITEMS; its URL."""
    with serve_items(tmp_path_factory.mktemp("stac"), [S2, S1, NAIP], ITEMS) as url:
        yield url


@pytest.fixture
def proxy(catalog) -> Iterator[CatalogProxy]:
    """The catalog behind a real proxy (scale_alibi.devworld.stac_proxy): faults, counters, truncated pages."""
    with CatalogProxy(catalog) as p:
        yield p


def found(catalog: str, layer: str, bbox=AREA, **opts) -> list[str]:
    return [it.id for it in search_items(catalog, layer, bbox, SearchOptions(**opts))]


def test_s2_keeps_the_box_the_interval_and_at_most_the_cloud_limit_and_needs_visual_but_not_scl(catalog):
    assert found(catalog, "s2", datetime=JUNE, max_cloud=20.0) == [
        "s2-at-the-cloud-limit", "s2-clear", "s2-last-evening-of-june", "s2-without-scl"]
    assert found(catalog, "s2", datetime=JUNE, max_cloud=4.0) == ["s2-last-evening-of-june", "s2-without-scl"]
    assert found(catalog, "s2", datetime="2022-06-10", max_cloud=20.0) == ["s2-clear"]  # one day
    assert found(catalog, "s2", max_cloud=100.0) == [  # no interval: every date
        "s2-at-the-cloud-limit", "s2-clear", "s2-cloudy", "s2-in-august", "s2-last-evening-of-june", "s2-without-scl"]


def test_s1_keeps_the_asked_mode_and_needs_both_polarisations(catalog):
    assert found(catalog, "s1", datetime=JUNE) == ["s1-iw", "s1-without-mode"]
    assert found(catalog, "s1", datetime=JUNE, s1_mode="EW") == ["s1-ew", "s1-without-mode"]


def test_naip_is_chosen_by_years_inclusive_and_ignores_the_interval(catalog):
    assert found(catalog, "naip", datetime=JUNE) == ["naip-2018", "naip-2020", "naip-2022", "naip-dated-2019"]
    assert found(catalog, "naip", datetime=JUNE, naip_years=(2019, 2020)) == ["naip-2020", "naip-dated-2019"]
    assert found(catalog, "naip", naip_years=(2021, 2021)) == []


def test_found_items_are_typed_scenes_with_only_the_sensors_asset_hrefs(catalog):
    from datetime import datetime, timezone

    (item,) = search_items(catalog, "s2", AREA, SearchOptions(datetime="2022-06-10"))
    assert item.id == "s2-clear" and item.collection == S2 and item.layer == "s2"
    assert item.datetime == datetime(2022, 6, 10, 17, tzinfo=timezone.utc)
    assert {k: a.href for k, a in item.assets} == {"visual": "https://example.test/s2-clear/visual.tif",
                                                   "SCL": "https://example.test/s2-clear/SCL.tif"}  # B04 is not read
    assert item.cloud_cover == 5.0
    assert item.footprint.bounds == pytest.approx((-97.15, 38.05, -97.05, 38.15))


def test_more_items_than_one_page_are_all_found_over_several_requests_sorted_by_id(proxy):
    ids = found(proxy.url, "s1", bbox=PAGED, datetime=JUNE)
    assert ids == [f"s1-paged-{i:03d}" for i in range(PAGED_COUNT)]
    assert proxy.searches >= 2  # 260 items at 250 a page


def test_a_search_answered_503_is_retried_and_gives_the_same_items(catalog, proxy):
    proxy.fail_searches = 2
    assert found(proxy.url, "s2", datetime=JUNE) == found(catalog, "s2", datetime=JUNE)
    assert proxy.searches == 3


def test_a_search_answered_503_every_time_is_one_user_error_after_all_tries(proxy, monkeypatch):
    monkeypatch.setattr(search, "BACKOFF_S", 0.001)  # the policy, not its waiting, is under test
    monkeypatch.setattr(search, "BACKOFF_MAX_S", 0.001)
    proxy.fail_searches = 1000
    with pytest.raises(UserError) as err:
        search_items(proxy.url, "s2", AREA, SearchOptions(datetime=JUNE))
    assert f"HTTP 503 on all {search.SEARCH_RETRIES + 1} tries" in str(err.value)
    assert "sentinel-2-l2a" in str(err.value) and "\n" not in str(err.value)
    assert proxy.searches == search.SEARCH_RETRIES + 1


def test_an_unreachable_catalog_is_one_user_error():
    with pytest.raises(UserError, match="cannot reach STAC catalog"):
        search_items(f"http://127.0.0.1:{free_port()}", "s2", AREA, SearchOptions(), timeout_s=2)


def test_intervals_parse_open_ends_and_whole_days():
    from datetime import datetime, timezone

    utc = timezone.utc
    assert parse_interval(None) == (None, None)
    assert parse_interval("2022-06-01/2022-06-30") == (datetime(2022, 6, 1, tzinfo=utc),
                                                       datetime(2022, 6, 30, 23, 59, 59, tzinfo=utc))
    assert parse_interval("../2022-06-30T12:00:00Z") == (None, datetime(2022, 6, 30, 12, tzinfo=utc))
    assert parse_interval("2022-06-01/..") == (datetime(2022, 6, 1, tzinfo=utc), None)
    assert parse_interval("2022-06-05") == (datetime(2022, 6, 5, tzinfo=utc), datetime(2022, 6, 5, 23, 59, 59, tzinfo=utc))


@pytest.mark.parametrize("bad, says", [("2022-06-30/2022-06-01", "ends before it starts"),
                                       ("june", "is not a STAC interval")])
def test_a_bad_interval_is_a_user_error(bad, says):
    with pytest.raises(UserError, match=says):
        parse_interval(bad)


def test_dedupe_keeps_the_first_of_each_collection_and_id_sorted():
    from scale_alibi.curate.scene import parse_scene

    def scene(collection: str, id_: str, day: int):
        return parse_scene({"id": id_, "collection": collection, "bbox": [0, 0, 1, 1],
                            "properties": {"datetime": f"2022-06-{day:02d}T00:00:00Z"}}, "s2", ())

    a1, a2, b, c = scene("b", "1", 1), scene("b", "1", 2), scene("a", "9", 3), scene("b", "0", 4)
    assert dedupe([a1, b, a2, c]) == [b, c, a1]


def test_a_used_up_retry_names_the_status_codes_not_digits_of_the_url():
    text = ("HTTPConnectionPool(host='127.0.0.1', port=34291): Max retries exceeded with url: /search "
            "(Caused by ResponseError('too many 503 error responses'))")
    assert search.network_reason(Exception(text), 30.0) == f"HTTP 503 on all {search.SEARCH_RETRIES + 1} tries"


# ------------------------------------------------------------------------------------------ complete, bounded

def test_a_full_page_without_a_next_link_is_split_by_time_and_nothing_is_lost(proxy):
    proxy.drop_next_links = -1  # every page ends the results, as PC's did in January 2026
    ids = found(proxy.url, "s1", bbox=PAGED, datetime=JUNE)
    assert ids == [f"s1-paged-{i:03d}" for i in range(PAGED_COUNT)]  # old code: the first 250 only
    assert proxy.dropped >= 1 and proxy.searches >= 3  # the full page, then its two halves


def test_a_full_page_without_a_next_link_in_the_shortest_window_is_an_error(proxy, monkeypatch):
    from datetime import timedelta

    monkeypatch.setattr(search, "SPLIT_FLOOR", timedelta(days=31))  # JUNE may not be cut in time
    monkeypatch.setattr(search, "SPLIT_FLOOR_DEG", 1.0)  # nor the 0.2 degree box in space
    proxy.drop_next_links = -1
    with pytest.raises(UserError, match=r"full page \(250 items\) with no link to the next page") as err:
        found(proxy.url, "s1", bbox=PAGED, datetime=JUNE)
    assert "\n" not in str(err.value)


def test_s1_and_s2_are_searched_only_within_the_gap_of_the_naip_captures(proxy):
    naip = search_items(proxy.url, "naip", AREA, SearchOptions(naip_years=(2022, 2022)))
    assert [it.id for it in naip] == ["naip-2022"]  # 2022-07-01
    before = proxy.searches
    near = search_items(proxy.url, "s2", AREA, SearchOptions(max_cloud=100.0, max_gap_days=25.0), naip=naip)
    # 2022-06-10 .. 06-30 are within 25 days of 07-01, 08-01 is 31 days after it: the hand-made truth
    assert [it.id for it in near] == ["s2-at-the-cloud-limit", "s2-clear", "s2-cloudy", "s2-last-evening-of-june",
                                         "s2-without-scl"]
    assert search_items(proxy.url, "s1", AREA, SearchOptions(max_gap_days=730.0), naip=[]) == []
    assert proxy.searches == before + 1  # without a NAIP capture, S1 is not searched at all
    # --datetime and the NAIP window both hold: their intersection is searched
    both = search_items(proxy.url, "s2", AREA, SearchOptions(datetime="2022-06-12/2022-12-31", max_cloud=100.0,
                                                                  max_gap_days=25.0), naip=naip)
    assert [it.id for it in both] == ["s2-cloudy", "s2-last-evening-of-june", "s2-without-scl"]
