"""The catalog searches of `curate build`, seen from a real proxy in front of the world's STAC API
(scale_alibi.devworld.stac_proxy): a bounded number at once on a Dask cluster, and complete results
when the catalog's pages lose their `next` link."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from scale_alibi.contract.release import Release
from scale_alibi.curate import search
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from scale_alibi.devworld.stac_proxy import CatalogProxy

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None}


def _middle(world, frac: float):
    w, s, e, n = world.bbox
    lo, hi = 0.5 - frac / 2, 0.5 + frac / 2
    return box(w + lo * (e - w), s + lo * (n - s), w + hi * (e - w), s + hi * (n - s))


def test_a_builds_searches_run_at_most_search_concurrency_at_once(world, tmp_path):
    region = _middle(world, 0.1)
    seen = {}
    for concurrency in (1, 3):
        with CatalogProxy(world.stac_url) as proxy:
            proxy.search_delay_s = 1.0  # long enough that searches allowed to overlap do
            build_release(tmp_path / str(concurrency),
                          resolve_request(zoom=16, region=region, release="gate", catalog=proxy.url),
                          RunOptions(scheduler="threads", workers=4, search_concurrency=concurrency, **QUIET))
            seen[concurrency] = proxy.max_in_flight
    assert seen[1] == 1
    assert seen[3] >= 2  # S1 and S2 of a block, both waiting on its NAIP, do overlap when allowed


def test_a_build_whose_pages_lose_their_next_link_still_finds_every_scene(world, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "PAGE_LIMIT", 5)  # the world's blocks hold dozens of scenes: many pages
    # (not fewer: NAIP quarter-quads of one flight overlap, with one timestamp: cuts cannot part them)
    region = _middle(world, 0.3)
    ref = Release(tmp_path / "ref", "pages")
    build_release(ref.root, resolve_request(zoom=16, region=region, release="pages", catalog=world.stac_url),
                  RunOptions(scheduler="synchronous", **QUIET))
    with CatalogProxy(world.stac_url) as proxy:
        proxy.drop_next_links = -1  # every page, as Planetary Computer's were in January 2026
        got = Release(tmp_path / "got", "pages")
        build_release(got.root, resolve_request(zoom=16, region=region, release="pages", catalog=proxy.url),
                      RunOptions(scheduler="synchronous", **QUIET))
        assert proxy.dropped > 0
    a, b = got.read_manifest(), ref.read_manifest()
    assert a.num_rows == b.num_rows > 0
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))


@pytest.fixture(autouse=True)
def _fresh_http_cache():
    yield
    from scale_alibi.curate.reader import clear_http_cache

    clear_http_cache()
