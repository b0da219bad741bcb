"""Manifests that change under a running server: one that was corrupt at start-up is served once
it is repaired, and a rewritten one is re-read; JSON documents answer HEAD."""

from __future__ import annotations

import time

import httpx
import pytest

from scale_alibi.contract.release import write_bytes_atomic
from scale_alibi.serve.process import ServerProcess
from tests.release_factory import X0, Y0, Z, make_release
from tests.serve_fixtures import shared_data_dir, shared_server


def _wait_for(check, seconds: float = 8.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_manifest_corrupt_at_start_is_served_once_repaired_and_a_rewritten_one_is_reread(tmp_path):
    rel = make_release(tmp_path, "r", nx=2, ny=2)
    good = rel.manifest_path.read_bytes()
    rel.manifest_path.write_bytes(good[: len(good) // 2])
    tile = f"/tiles/r/s1/{Z}/{X0}/{Y0}.png"
    with ServerProcess(tmp_path) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/releases/r").status_code == 404
        assert client.get(tile).status_code == 404
        write_bytes_atomic(rel.manifest_path, good)  # repaired
        assert _wait_for(lambda: client.get("/releases/r").status_code == 200)
        assert client.get("/releases/r").json()["triplets"] == 4
        assert client.get(tile).status_code == 200
        smaller = make_release(tmp_path / "other", "r", nx=1, ny=1)  # the same first triplet, alone
        write_bytes_atomic(rel.manifest_path, smaller.manifest_path.read_bytes())
        assert _wait_for(lambda: client.get("/releases/r").json()["triplets"] == 1)
        assert client.get(f"/tiles/r/s1/{Z}/{X0 + 1}/{Y0}.png").status_code == 404
        assert client.get(tile).status_code == 200


@pytest.mark.parametrize("path", [
    "/health", "/releases", "/releases/small", "/releases/small/triplets?limit=2",
    f"/releases/small/triplets/{Z}/{X0}/{Y0}", "/releases/small/coverage.geojson", "/releases/small/shards",
    "/tiles/small/s2/tilejson.json",
])
def test_json_documents_answer_head_with_the_get_headers_and_no_body(path):
    shared_data_dir()
    base = shared_server().url
    got = httpx.get(base + path)
    head = httpx.head(base + path)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers.get(name) == got.headers.get(name), name
