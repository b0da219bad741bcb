"""Path safety: hostile paths sent byte for byte get a JSON 4xx, and the canary never leaks."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.release_factory import X0, Y0, Z
from tests.serve_fixtures import raw_get, shared_data_dir, shared_server


@pytest.fixture(scope="module")
def data():
    return shared_data_dir()


@pytest.fixture(scope="module")
def server():
    return shared_server()


def hostile_paths(data) -> list[str]:
    """At least 15 attempts to read outside the data directory or things that must not be served."""
    sl, sz, sx, sy = data.evil_symlinked_tile
    ul, uz, ux, uy = data.evil_unlisted_link
    dl, dz, dx, dy = data.evil_dirlink_tile
    return [
        "/../canary.txt",
        "/tiles/../../canary.txt",
        "/tiles/small/s2/15/../../../../../canary.txt",
        "/tiles/small/s2/15/5241/12661.png/../../../../../../canary.txt",
        "/tiles/%2e%2e/%2e%2e/canary.txt",
        "/tiles/..%2F..%2Fcanary.txt/s2/tilejson.json",
        "/tiles/small%2F..%2F..%2F..%2Fcanary.txt/s2/15/1/2.png",
        "/tiles/small/s2/15/5241/..%2F..%2F..%2F..%2F..%2F..%2Fcanary.txt",
        "/tiles/..%252F..%252Fcanary.txt/s2/15/1/2.png",  # double encoding
        "/triplets/..%2F..%2F/15/1/2",
        "/releases/..%2F..%2F",
        "/releases/..",
        "/shards/..%2F..%2Fcanary.txt/0.tar",
        "/static/../../canary.txt",
        "/static/..%2F..%2F..%2Fcanary.txt",
        "/static/%2e%2e/%2e%2e/%2e%2e/canary.txt",
        "/static//etc/passwd",
        "/static/..\\..\\..\\canary.txt",
        "/tiles/small/s2/15/5241/12661.png%00",
        # symlinks inside the data directory that point outside it
        f"/tiles/evil/{sl}/{sz}/{sx}/{sy}.png",  # listed in the manifest, file links to the canary
        f"/tiles/evil/{ul}/{uz}/{ux}/{uy}.png",  # link to the canary, not in the manifest
        f"/tiles/evil/{dl}/{dz}/{dx}/{dy}.png",  # listed, its directory links outside
        f"/triplets/evil/{Z}/{X0}/{Y0}",
        f"/triplets/evil/{Z}/{X0 + 1}/{Y0}",
        "/shards/evil/0.tar?shard_size=1&split=all",
        "/shards/evil/1.tar?shard_size=1&split=all",
        # a release directory that is a symlink to a finished release outside the data directory
        "/releases/escape",
        f"/tiles/escape/s2/{Z}/{X0}/{Y0}.png",
        f"/triplets/escape/{Z}/{X0}/{Y0}",
        "/shards/escape/0.tar?shard_size=1&split=all",
        # an unfinished release: tiles on disk, no manifest
        f"/tiles/unfinished/s2/{Z}/{X0}/{Y0}.png",
        "/releases/unfinished/triplets",
    ]


def test_hostile_paths_get_json_4xx_and_never_the_canary(server, data):
    paths = hostile_paths(data)
    assert len(paths) >= 15
    outside = [p.read_bytes() for p in (data.root / "outside_col").iterdir()]
    for path in paths:
        for method in ("GET", "HEAD"):
            status, headers, body = raw_get(server.url, path, method)
            assert status in (400, 404, 405, 422), (path, method, status, body[:200])
            assert data.canary_text.encode() not in body, path
            assert all(o not in body for o in outside), path
            if method == "GET":
                assert headers["content-type"].startswith("application/json"), (path, headers)
                assert "detail" in json.loads(body), path
    # The server is still healthy afterwards (no crash, no 500s).
    assert raw_get(server.url, "/health")[0] == 200


def test_good_tiles_of_a_release_with_hostile_links_still_serve(server, data):
    # The second triplet's s2 tile is an ordinary file: the release is served, only bad files are refused.
    r = httpx.get(f"{server.url}/tiles/evil/s2/{Z}/{X0 + 1}/{Y0}.png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


def test_no_response_is_a_500_or_a_traceback(server, data):
    weird = ["/tiles/small/s2/15/5241/1e3.png", "/tiles/small/s2/15/5241/%ff.png", "/releases/small/triplets?limit=1e9",
             "/shards/small/0.tar?shard_size=99999999999999999999999", "/shards/small/0.tar?seed=18446744073709551616",
             "/releases/%00", "/tiles/small/s2/15/5241/12661.png?x=" + "a" * 4000, "/triplets/small/0/0/0"]
    for path in weird:
        status, headers, body = raw_get(server.url, path)
        assert status < 500 and b"Traceback" not in body, (path, status)
        if status >= 400:
            assert headers["content-type"].startswith("application/json"), path
