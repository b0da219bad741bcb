"""Pieces of the service in-process: range parsing, the LRU, the catalog's discovery of releases."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from scale_alibi.contract.release import MANIFEST_NAME
from scale_alibi.serve.app import create_app
from scale_alibi.serve.catalog import Catalog
from scale_alibi.serve.files import Blob, BlobCache, RangeNotSatisfiable, etag_matches, parse_range
from tests.release_factory import X0, Y0, Z, make_release


@pytest.mark.parametrize("header,expect", [
    (b"bytes=0-0", (0, 0)), (b"bytes=10-19", (10, 19)), (b"bytes=90-", (90, 99)), (b"bytes=-5", (95, 99)),
    (b"bytes=-500", (0, 99)), (b"bytes=50-5000", (50, 99)), (b"BYTES=1-2", (1, 2)),
    (b"items=0-1", None), (b"bytes=5-1", None), (b"bytes=a-b", None), (b"bytes=0-1,3-4", None), (b"bytes=", None),
])
def test_parse_range(header, expect):
    assert parse_range(header, 100) == expect


@pytest.mark.parametrize("header", [b"bytes=100-", b"bytes=100-200", b"bytes=-0"])
def test_parse_range_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_etag_matches():
    assert etag_matches(b'"a"', b'"a"') and etag_matches(b'W/"a"', b'"a"') and etag_matches(b' "x" , "a"', b'"a"')
    assert etag_matches(b"*", b'"a"') and not etag_matches(b'"b"', b'"a"') and not etag_matches(b"a", b'"a"')


def test_blob_cache_is_bounded_and_least_recently_used():
    cache = BlobCache(max_bytes=8000)
    blob = lambda i: Blob.make(bytes([i]) * 900, f"{i:064x}")  # noqa: E731
    for i in range(8):
        cache.put(str(i), blob(i))
    assert cache.get("0") is not None  # 0 is now the most recently used
    for i in range(8, 12):
        cache.put(str(i), blob(i))
    assert cache.size <= 8000
    assert cache.get("0") is not None and cache.get("1") is None
    cache.put("big", Blob.make(b"x" * 1001, "0" * 64))  # over an eighth of the budget: not cached
    assert cache.get("big") is None


def test_release_that_finishes_later_is_served_and_a_broken_one_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(Catalog, "RESCAN_SECONDS", 0.0)
    make_release(tmp_path, "a", nx=1, ny=1)
    late = make_release(tmp_path, "late", nx=1, ny=1, seed=5, finished=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST_NAME).write_bytes(b"not parquet")
    client = TestClient(create_app(tmp_path))
    assert [r["name"] for r in client.get("/releases").json()["releases"]] == ["a"]
    url = f"/tiles/late/s2/{Z}/{X0}/{Y0}.png"
    assert client.get(url).status_code == 404
    make_release(tmp_path, "late", nx=1, ny=1, seed=5)  # the build finishes: the manifest appears
    r = client.get(url)
    assert r.status_code == 200 and r.content == late.tile_path("s2", Z, X0, Y0).read_bytes()
    assert client.get("/releases/broken").status_code == 404
    assert client.get("/health").json()["releases"] == 2
