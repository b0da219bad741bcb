"""The HTTP service over a real socket: every endpoint, caching headers, ranges, paging, shards."""

from __future__ import annotations

import io
import json
import tarfile

import httpx
import numpy as np
import pytest

from scale_alibi.contract.release import HIRES_CHILDREN, HIRES_NAMES, TRIPLET_MEMBERS, content_hash, shard_rows
from scale_alibi.contract.tiles import tile_bounds
from tests.release_factory import X0, Y0, Z
from tests.serve_fixtures import shared_data_dir, shared_server

X, Y = X0 + 1, Y0 + 1  # 15/5241/12661, the example


@pytest.fixture(scope="module")
def data():
    return shared_data_dir()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(base_url=shared_server().url, timeout=20) as c:
        yield c


def manifest(data):
    return data.small.read_manifest().to_pylist()


def untar(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def assert_json_error(r: httpx.Response, statuses=(400, 404, 422)) -> None:
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "detail" in r.json()


# ---- releases -----------------------------------------------------------------------------------

def test_releases_lists_only_finished_releases_inside_the_data_dir(client, data):
    r = client.get("/releases")
    assert r.status_code == 200
    docs = {d["name"]: d for d in r.json()["releases"]}
    assert sorted(docs) == ["evil", "small"]  # not "unfinished" (no manifest), not "escape" (links outside)
    small = docs["small"]
    rows = manifest(data)
    assert small["triplets"] == len(rows) == 12
    assert small["splits"] == {"train": 9, "heldout": 3}
    assert small["zooms"] == [Z]
    assert small["layers"]["naip"] == {"minzoom": Z, "maxzoom": Z + 1}
    z, x, y = (np.array([r[k] for r in rows]) for k in "zxy")
    b = tile_bounds(z, x, y)
    assert small["bounds"] == pytest.approx([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])
    assert small["links"]["tilejson"]["s2"] == "/tiles/small/s2/tilejson.json"
    assert client.get("/releases/small").json()["triplets"] == 12


def test_health_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok", "releases": 2}
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/releases", "/tiles/{release}/{layer}/{z}/{x}/{y}.png", "/triplets/{release}/{z}/{x}/{y}",
              "/releases/{release}/shards", "/shards/{release}/{shard}.tar", "/releases/{release}/triplets"):
        assert p in paths


# ---- tiles --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,z,x,y", [
    ("s1", Z, X, Y), ("s2", Z, X, Y), ("naip", Z, X, Y),
    ("naip", Z + 1, 2 * X, 2 * Y), ("naip", Z + 1, 2 * X + 1, 2 * Y + 1),
])
def test_tile_bytes_and_headers(client, data, layer, z, x, y):
    on_disk = data.small.tile_path(layer, z, x, y).read_bytes()
    for _ in range(2):  # first from disk, then from the in-memory cache
        r = client.get(f"/tiles/small/{layer}/{z}/{x}/{y}.png", headers={"accept-encoding": "gzip, br"})
        assert r.status_code == 200
        assert r.content == on_disk
        assert r.headers["content-type"] == "image/png"
        assert "content-encoding" not in r.headers
        assert r.headers["etag"] == f'"{content_hash(on_disk)}"'
        assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
        assert r.headers["access-control-allow-origin"] == "*"
        assert int(r.headers["content-length"]) == len(on_disk)


def test_conditional_get_and_head(client, data):
    url = f"/tiles/small/s2/{Z}/{X}/{Y}.png"
    etag = client.get(url).headers["etag"]
    for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = client.get(url, headers={"if-none-match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert client.get(url, headers={"if-none-match": '"other"'}).status_code == 200
    h = client.head(url)
    assert h.status_code == 200 and h.content == b""
    assert int(h.headers["content-length"]) == data.small.tile_path("s2", Z, X, Y).stat().st_size


@pytest.mark.parametrize("path", [f"/tiles/small/s2/{Z}/{X}/{Y}.png", f"/tiles/small/s2/0{Z}/{X}/{Y}.png"])
def test_ranges(client, data, path):
    # The second spelling misses the fast path and goes through the FastAPI route: same behaviour.
    body = data.small.tile_path("s2", Z, X, Y).read_bytes()
    n = len(body)
    cases = {"bytes=0-9": (0, 9), "bytes=-10": (n - 10, n - 1), "bytes=100-": (100, n - 1), f"bytes=5-{n + 50}": (5, n - 1)}
    for header, (a, b) in cases.items():
        r = client.get(path, headers={"range": header})
        assert r.status_code == 206, header
        assert r.content == body[a : b + 1]
        assert r.headers["content-range"] == f"bytes {a}-{b}/{n}"
    r = client.get(path, headers={"range": f"bytes={n}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{n}"
    assert_json_error(r, (416,))
    etag = client.get(path).headers["etag"]
    assert client.get(path, headers={"range": "bytes=0-9", "if-range": etag}).status_code == 206
    r = client.get(path, headers={"range": "bytes=0-9", "if-range": '"stale"'})
    assert r.status_code == 200 and r.content == body
    assert client.get(path, headers={"range": "bytes=0-1,5-6"}).content == body  # multi-range: whole file


@pytest.mark.parametrize("path,status", [
    ("/tiles/small/s2/15/abc/12661.png", 422),
    ("/tiles/small/s2/x/5241/12661.png", 422),
    ("/tiles/small/s2/15/5241/1.5.png", 422),
    ("/tiles/small/s2/15/-1/12661.png", 422),
    ("/tiles/small/s2/15/32768/12661.png", 422),
    ("/tiles/small/s2/15/5241/32768.png", 422),
    ("/tiles/small/s2/31/5241/12661.png", 422),
    ("/tiles/small/s2/-1/0/0.png", 422),
    ("/tiles/small/s2/99999999999999999999/0/0.png", 422),
    ("/tiles/small/s3/15/5241/12661.png", 404),
    ("/tiles/nope/s2/15/5241/12661.png", 404),
    ("/tiles/unfinished/s2/15/5240/12660.png", 404),
    ("/tiles/small/s1/16/10482/25322.png", 404),  # only NAIP exists one zoom deeper
    ("/tiles/small/s2/14/2620/6330.png", 404),
    ("/tiles/small/s2/15/5240/99.png", 404),
    ("/tiles/small/s2/15/5241/12661.jpg", 404),
    ("/triplets/small/15/5241/99", 404),
    ("/triplets/small/15/5241/abc", 422),
    ("/triplets/small/15/99999/0", 422),
    ("/tiles/small/s2/tilejson.json/x", 404),
    ("/tiles/small/bad/tilejson.json", 404),
])
def test_bad_addresses_get_json_errors(client, path, status):
    r = client.get(path)
    assert r.status_code == status, r.text
    assert_json_error(r, (status,))


def test_tile_on_disk_but_not_in_manifest_is_404(client, data):
    layer, z, x, y = data.extra_tile
    assert data.small.tile_path(layer, z, x, y).is_file()
    assert_json_error(client.get(f"/tiles/small/{layer}/{z}/{x}/{y}.png"), (404,))


def test_non_get_methods_are_refused_with_json(client):
    r = client.post(f"/tiles/small/s2/{Z}/{X}/{Y}.png")
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/json")


def test_cors_preflight(client):
    r = client.options(f"/tiles/small/s2/{Z}/{X}/{Y}.png",
                       headers={"origin": "http://example.org", "access-control-request-method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "http://example.org")


def test_tilejson(client, data):
    for layer, zooms in (("s1", (Z, Z)), ("s2", (Z, Z)), ("naip", (Z, Z + 1))):
        doc = client.get(f"/tiles/small/{layer}/tilejson.json").json()
        assert doc["tilejson"] == "3.0.0"
        assert (doc["minzoom"], doc["maxzoom"]) == zooms
        assert doc["tiles"] == [f"{client.base_url}/tiles/small/{layer}/{{z}}/{{x}}/{{y}}.png".replace("//tiles", "/tiles")]
        w, s, e, n = doc["bounds"]
        assert w < doc["center"][0] < e and s < doc["center"][1] < n
        assert ("Copernicus" if layer != "naip" else "USDA") in doc["attribution"]
    assert "public domain" in client.get("/tiles/small/naip/tilejson.json").json()["attribution"]


# ---- triplets -----------------------------------------------------------------------------------

def test_triplet_tar(client, data):
    r = client.get(f"/triplets/small/{Z}/{X}/{Y}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    files = untar(r.content)
    assert list(files) == [f"{m}.png" for m in TRIPLET_MEMBERS] + ["metadata.json"]
    for layer in ("s1", "s2", "naip"):
        assert files[f"{layer}.png"] == data.small.tile_path(layer, Z, X, Y).read_bytes()
    for name, (dx, dy) in zip(HIRES_NAMES, HIRES_CHILDREN):
        assert files[f"{name}.png"] == data.small.tile_path("naip", Z + 1, 2 * X + dx, 2 * Y + dy).read_bytes()
    meta = json.loads(files["metadata.json"])
    row = next(r for r in manifest(data) if (r["x"], r["y"]) == (X, Y))
    assert meta == {"release": "small", **row}
    assert client.get(f"/triplets/small/{Z}/{X}/{Y}", headers={"if-none-match": r.headers["etag"]}).status_code == 304


def test_triplet_metadata_and_coverage(client, data):
    doc = client.get(f"/releases/small/triplets/{Z}/{X}/{Y}").json()
    assert (doc["z"], doc["x"], doc["y"]) == (Z, X, Y) and doc["triplet"] == f"/triplets/small/{Z}/{X}/{Y}"
    cov = client.get("/releases/small/coverage.geojson").json()
    assert len(cov["features"]) == 12
    assert {(f["properties"]["x"], f["properties"]["y"]) for f in cov["features"]} == {
        (r["x"], r["y"]) for r in manifest(data)}


def test_stats_json_is_served_once_curate_stats_wrote_it(client, data):
    r = client.get("/releases/small/stats.json")
    assert_json_error(r, (404,))
    assert "curate stats" in r.json()["detail"]
    assert client.get("/releases/small").json()["links"]["stats"] == "/releases/small/stats.json"
    stats = {"modalities": {"s2": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}}, "triplets": 8}
    path = data.small.path / "stats.json"
    try:
        path.write_text(json.dumps(stats))
        assert client.get("/releases/small/stats.json").json() == stats  # no restart needed
        path.write_text("{not json")
        r = client.get("/releases/small/stats.json")
        assert_json_error(r, (500,))
        assert "curate stats" in r.json()["detail"]
    finally:
        path.unlink(missing_ok=True)
    evil = data.data / "evil" / "stats.json"
    evil.symlink_to(data.canary)  # a link out of the release is not followed
    try:
        r = client.get("/releases/evil/stats.json")
        assert_json_error(r, (404,))
        assert data.canary_text not in r.text
    finally:
        evil.unlink()


@pytest.mark.parametrize("split", ["all", "train", "heldout"])
def test_paging_by_cursor_and_offset(client, data, split):
    rows = [r for r in manifest(data) if split == "all" or r["split"] == split]
    expect = [(r["z"], r["x"], r["y"]) for r in rows]
    assert expect == sorted(expect)
    got, url = [], f"/releases/small/triplets?limit=5&split={split}"
    while url:
        page = client.get(url).json()
        assert page["total"] == len(rows)
        got += [(i["z"], i["x"], i["y"]) for i in page["items"]]
        url = page["next"]
    assert got == expect
    by_offset = []
    for off in range(0, len(rows) + 5, 5):
        items = client.get(f"/releases/small/triplets?offset={off}&limit=5&split={split}").json()["items"]
        by_offset += [(i["z"], i["x"], i["y"]) for i in items]
    assert by_offset == expect
    first = client.get(f"/releases/small/triplets?limit=1&split={split}").json()["items"][0]
    assert first["hash_naip_hires"] == rows[0]["hash_naip_hires"]


@pytest.mark.parametrize("query", ["cursor=1-2-3&offset=0", "cursor=garbage", "cursor=15-99999-0", "limit=0",
                                   "limit=1001", "offset=-1", "split=test"])
def test_paging_bad_params(client, query):
    assert_json_error(client.get(f"/releases/small/triplets?{query}"), (422,))


# ---- shards -------------------------------------------------------------------------------------

def read_shard(client, url: str) -> list[tuple[str, dict[str, bytes]]]:
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers.get("transfer-encoding") == "chunked"
    samples: dict[str, dict[str, bytes]] = {}
    for name, body in untar(r.content).items():
        key, _, ext = name.partition(".")
        samples.setdefault(key, {})[ext] = body
    assert int(r.headers["x-shard-triplets"]) == len(samples)
    return list(samples.items())


@pytest.mark.parametrize("split,size", [("train", 4), ("heldout", 2), ("all", 5), ("all", 12)])
def test_shards_cover_the_split_once_in_epoch_order(client, data, split, size):
    rows = [r for r in manifest(data) if split == "all" or r["split"] == split]
    info = client.get(f"/releases/small/shards?shard_size={size}&split={split}").json()
    assert info == {"release": "small", "split": split, "triplets": len(rows), "shard_size": size,
                    "num_shards": -(-len(rows) // size)}
    seen = []
    for i in range(info["num_shards"]):
        samples = read_shard(client, f"/shards/small/{i}.tar?shard_size={size}&seed=7&epoch=3&split={split}")
        expect = [rows[j] for j in shard_rows(len(rows), 7, 3, size, i)]
        assert [k for k, _ in samples] == [f"{r['z']}_{r['x']}_{r['y']}" for r in expect]
        for (_key, members), row in zip(samples, expect):
            assert sorted(members) == sorted([f"{m}.png" for m in TRIPLET_MEMBERS] + ["json"])
            assert json.loads(members["json"]) == row
            assert content_hash(members["s2.png"]) == row["hash_s2"]
            assert [content_hash(members[f"{n}.png"]) for n in HIRES_NAMES] == row["hash_naip_hires"]
        seen += [k for k, _ in samples]
    assert sorted(seen) == sorted(f"{r['z']}_{r['x']}_{r['y']}" for r in rows)


def test_shard_order_depends_on_seed_and_epoch_and_resumes_with_start(client):
    keys = lambda url: [k for k, _ in read_shard(client, url)]  # noqa: E731
    base = keys("/shards/small/0.tar?shard_size=9&seed=1&epoch=0")
    assert keys("/shards/small/0.tar?shard_size=9&seed=1&epoch=0") == base
    assert keys("/shards/small/0.tar?shard_size=9&seed=1&epoch=1") != base
    assert keys("/shards/small/0.tar?shard_size=9&seed=2&epoch=0") != base
    assert keys("/shards/small/0.tar?shard_size=9&seed=1&epoch=0&start=4") == base[4:]
    assert keys("/shards/small/0.tar?shard_size=9&seed=1&epoch=0&start=9") == []
    r = client.get("/shards/small/0.tar?shard_size=9&seed=1")
    assert client.get("/shards/small/0.tar?shard_size=9&seed=1", headers={"if-none-match": r.headers["etag"]}).status_code == 304


@pytest.mark.parametrize("query,status", [
    ("/shards/small/0.tar?shard_size=0", 422),
    ("/shards/small/0.tar?shard_size=abc", 422),
    ("/shards/small/0.tar?shard_size=100001", 422),
    ("/shards/small/0.tar?seed=-1", 422),
    ("/shards/small/0.tar?epoch=x", 422),
    ("/shards/small/0.tar?split=test", 422),
    ("/shards/small/0.tar?shard_size=4&start=5", 422),
    ("/shards/small/0.tar?start=-1", 422),
    ("/shards/small/3.tar?shard_size=4", 404),  # 9 train rows: shards 0..2
    ("/shards/small/-1.tar", 404),
    ("/shards/small/x.tar", 422),
    ("/shards/nope/0.tar", 404),
    ("/shards/unfinished/0.tar", 404),
    ("/releases/small/shards?shard_size=0", 422),
    ("/releases/small/shards?split=x", 422),
    ("/releases/nope/shards", 404),
])
def test_shard_bad_params(client, query, status):
    assert_json_error(client.get(query), (status,))


def test_tiles_and_triplets_of_a_built_release_match_its_files(built_release):
    """Against `curate build`'s own output: tiles and triplets match disk."""
    data_root, name = built_release
    from scale_alibi.contract.release import Release
    from scale_alibi.serve.process import ServerProcess

    release = Release(data_root, name)
    rows = release.read_manifest().to_pylist()[:3]
    with ServerProcess(data_root) as server, httpx.Client(base_url=server.url) as c:
        for row in rows:
            z, x, y = row["z"], row["x"], row["y"]
            for layer in ("s1", "s2", "naip"):
                r = c.get(f"/tiles/{name}/{layer}/{z}/{x}/{y}.png")
                assert r.status_code == 200 and r.content == release.tile_path(layer, z, x, y).read_bytes()
                assert r.headers["etag"] == f'"{row[f"hash_{layer}"]}"'
            files = untar(c.get(f"/triplets/{name}/{z}/{x}/{y}").content)
            assert [content_hash(files[f"{n}.png"]) for n in HIRES_NAMES] == row["hash_naip_hires"]
