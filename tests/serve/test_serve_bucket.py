"""`curate serve --data s3://bucket/prefix`: releases read from a real S3-protocol server on loopback
(moto_server), served byte for byte as the same releases from a local directory."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.contract.release import MANIFEST_NAME, STATS_NAME, Release, triplet_files
from scale_alibi.serve.process import ServerProcess
from tests.object_store import new_bucket, s3_environment, s3_server
from tests.release_factory import X0, Y0, Z, make_release
from tests.serve_fixtures import raw_get
from tests.stac_server import free_port

PREFIX = "releases"


def bucket_fs(url: str):
    """(filesystem, root) of `url` for the S3 server the environment names now (fsspec caches
    instances by arguments, not by environment, and tests here use two servers)."""
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    return fs, root.rstrip("/")


def upload(local_dir: Path, url: str, skip: tuple[str, ...] = ()) -> None:
    """Copy every file under `local_dir` to the same relative keys under `url`, except names in `skip`."""
    fs, root = bucket_fs(url)
    files = {
        f"{root}/{p.relative_to(local_dir).as_posix()}": p.read_bytes()
        for p in sorted(local_dir.rglob("*")) if p.is_file() and p.name not in skip
    }
    fs.pipe(files)


@pytest.fixture(scope="module")
def served(s3_endpoint, tmp_path_factory):
    """(local server, bucket server, bucket URL, local data directory) over the same releases: small
    (a tile tree), packed (small as PMTiles archives), victim, and unfinished (no manifest)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_environment(s3_endpoint).items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        data = tmp_path_factory.mktemp("bucket-serve") / "data"
        small = make_release(data, "small", nx=4, ny=3)
        (small.path / STATS_NAME).write_text(json.dumps({"release": "small", "s2": {"mean": [0.1, 0.2, 0.3]}}))
        packed = tmp_path_factory.mktemp("bucket-pack")
        result = CliRunner().invoke(main, ["pack", "--data", str(data), "--release", "small", "--out", str(packed)])
        assert result.exit_code == 0, result.output
        (packed / "small").rename(data / "packed")  # archives, manifest and stats.json; no tree
        make_release(data, "victim", nx=2, ny=2, seed=7)
        make_release(data, "unfinished", nx=1, ny=1, seed=2, finished=False)
        url = f"s3://{new_bucket(s3_endpoint)}/{PREFIX}"
        upload(data, url)
        with ServerProcess(data) as local, ServerProcess(url) as bucket:
            yield local, bucket, url, data


def _same(local: ServerProcess, bucket: ServerProcess, target: str, headers: dict[str, str] | None = None) -> bytes:
    """Assert both servers answer `target` alike (status, body, content headers); returns the body."""
    a = raw_get(local.url, target, headers=headers)
    b = raw_get(bucket.url, target, headers=headers)
    assert a[0] == b[0], (target, a[0], b[0], b[2][:300])
    assert a[2] == b[2], target
    for name in ("content-type", "etag", "content-range", "content-length", "x-shard-triplets"):
        assert a[1].get(name) == b[1].get(name), (target, name)
    return b[2]


@pytest.mark.parametrize("release", ["small", "packed"])
def test_a_release_in_a_bucket_is_served_with_the_same_bytes_as_from_its_directory(served, release):
    local, bucket, _, data = served
    tiles = [("s1", Z, X0, Y0), ("s2", Z, X0 + 3, Y0 + 2), ("naip", Z, X0 + 1, Y0),
             ("naip", Z + 1, 2 * X0 + 1, 2 * Y0 + 1)]
    for layer, z, x, y in tiles:
        body = _same(local, bucket, f"/tiles/{release}/{layer}/{z}/{x}/{y}.png")
        assert body == (data / "small" / layer / str(z) / str(x) / f"{y}.png").read_bytes()
        _same(local, bucket, f"/tiles/{release}/{layer}/{z}/{x}/{y}.png")  # again, from the tile cache
    tile = f"/tiles/{release}/s2/{Z}/{X0}/{Y0 + 1}.png"
    etag = raw_get(local.url, tile)[1]["etag"]
    _same(local, bucket, tile, {"range": "bytes=10-99"})
    _same(local, bucket, tile, {"if-none-match": etag})
    _same(local, bucket, f"/tiles/{release}/s2/0{Z}/{X0}/{Y0}.png")  # not canonical: through the full route
    _same(local, bucket, f"/tiles/{release}/s2/{Z}/{X0 + 9}/{Y0}.png")  # 404: not in the manifest
    assert len(_same(local, bucket, f"/triplets/{release}/{Z}/{X0 + 2}/{Y0 + 1}")) > 7 * 512
    for shard in ("0.tar?shard_size=5&seed=3", "1.tar?shard_size=5&seed=3&start=2", "0.tar?shard_size=20&split=heldout"):
        assert len(_same(local, bucket, f"/shards/{release}/{shard}")) > 7 * 512
    for doc in ("", "/stats.json", "/triplets", "/shards?shard_size=5", "/coverage.geojson"):
        _same(local, bucket, f"/releases/{release}{doc}")
    _same(local, bucket, "/releases")
    tilejson = [json.loads(raw_get(s.url, f"/tiles/{release}/naip/tilejson.json")[2]) for s in (local, bucket)]
    for doc in tilejson:
        doc["tiles"] = [t.split("/tiles/", 1)[1] for t in doc["tiles"]]  # the servers' own URLs differ
    assert tilejson[0] == tilejson[1]
    assert raw_get(bucket.url, f"/?release={release}")[0] == 200  # the viewer


def test_only_finished_validly_named_releases_in_the_bucket_are_served_and_a_new_manifest_object_is_read(served):
    _, bucket, url, data = served
    names = lambda: [r["name"] for r in json.loads(raw_get(bucket.url, "/releases")[2])["releases"]]  # noqa: E731
    fs, root = bucket_fs(url)
    manifest = (data / "small" / MANIFEST_NAME).read_bytes()
    assert names() == ["packed", "small", "victim"]
    fs.pipe({f"{root}/not a name!/{MANIFEST_NAME}": manifest, f"{root}/.staging/{MANIFEST_NAME}": manifest})
    assert raw_get(bucket.url, "/releases/unfinished")[0] == 404
    late = make_release(data.parent / "late", "late", nx=1, ny=1, seed=9)
    upload(late.root, url, skip=(MANIFEST_NAME,))
    time.sleep(2.5)  # past the rescan interval: this look-up starts a survey, the one after applies it
    names()
    time.sleep(1)
    assert "late" not in names()  # the tiles alone do not make a release
    upload(late.root, url)  # the manifest, last, as a build writes it
    deadline = time.monotonic() + 10
    while "late" not in names() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert names() == ["late", "packed", "small", "victim"]  # not the bad name, nor the hidden prefix
    status, _, body = raw_get(bucket.url, f"/tiles/late/s1/{Z}/{X0}/{Y0}.png")
    assert status == 200 and body == late.tile_path("s1", Z, X0, Y0).read_bytes()
    # A rebuilt release (a new manifest object: another ETag) is re-read.
    rebuilt = make_release(data.parent / "rebuilt", "late", nx=2, ny=1, seed=9)
    upload(rebuilt.root, url)
    triplets = lambda: json.loads(raw_get(bucket.url, "/releases/late")[2])["triplets"]  # noqa: E731
    deadline = time.monotonic() + 10
    while triplets() != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert triplets() == 2


def test_a_vanished_tile_object_is_a_404_and_replaced_bytes_are_a_500_never_served(served):
    _, bucket, url, data = served
    fs, root = bucket_fs(url)
    rows = Release(data, "victim").read_manifest().to_pylist()
    files = [[path for path, _ in triplet_files(row)] for row in rows]
    gone, bad, replaced = files[0][0], files[1][1], files[2][2]
    triplet = "/triplets/victim/{z}/{x}/{y}".format(**rows[3])
    assert raw_get(bucket.url, triplet)[0] == 200
    fs.rm_file(f"{root}/victim/{gone}")
    fs.pipe_file(f"{root}/victim/{bad}", b"\x89PNG not the built tile")
    fs.pipe_file(f"{root}/victim/{replaced}", (data / "victim" / gone).read_bytes())  # a valid PNG, wrong place
    status, _, body = raw_get(bucket.url, f"/tiles/victim/{gone}")
    assert status == 404 and "no s1 tile" in json.loads(body)["detail"]
    for path in (bad, replaced):
        status, _, body = raw_get(bucket.url, f"/tiles/victim/{path}")
        assert status == 500 and "is damaged" in json.loads(body)["detail"]
    # Fetched bytes are checked at every fetch: a triplet served before is refused once an object changes.
    fs.pipe_file(f"{root}/victim/{files[3][6]}", b"\x89PNG changed later")
    status, _, body = raw_get(bucket.url, triplet)
    assert status == 500 and "is damaged" in json.loads(body)["detail"]
    status, _, body = raw_get(bucket.url, "/shards/victim/0.tar?shard_size=4")
    assert status == 404 and "missing" in json.loads(body)["detail"]


def test_a_store_that_stops_answering_is_a_503_while_cached_tiles_and_the_catalog_stay_served(tmp_path, monkeypatch):
    release = make_release(tmp_path / "data", "small", nx=1, ny=1)
    cached, uncached = f"/tiles/small/s1/{Z}/{X0}/{Y0}.png", f"/tiles/small/s2/{Z}/{X0}/{Y0}.png"
    with s3_server() as endpoint:
        for key, value in {**s3_environment(endpoint), "AWS_MAX_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(key, value)
        url = f"s3://{new_bucket(endpoint)}/{PREFIX}"
        upload(release.root, url)
        server = ServerProcess(url).start()
        assert raw_get(server.url, cached)[0] == 200
    try:  # the store is gone
        status, headers, body = raw_get(server.url, uncached)
        assert status == 503 and headers["retry-after"] == "1" and "did not answer" in json.loads(body)["detail"]
        status, _, body = raw_get(server.url, "/shards/small/0.tar?shard_size=1")
        assert status == 503 and "did not answer" in json.loads(body)["detail"]
        assert raw_get(server.url, cached)[2] == release.tile_path("s1", Z, X0, Y0).read_bytes()
        time.sleep(2.5)  # past the rescan interval: this look-up starts a survey, which fails
        raw_get(server.url, "/releases")
        deadline = time.monotonic() + 10
        while "could not list releases" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "could not list releases" in server.output()
        assert [r["name"] for r in json.loads(raw_get(server.url, "/releases")[2])["releases"]] == ["small"]
    finally:
        server.stop()


@pytest.mark.parametrize("case, mentions", [
    ("missing bucket", "does not exist"),
    ("no credentials", "Unable to locate credentials"),
    ("unreachable endpoint", "Could not connect to the endpoint"),
    ("no library", "pip install gcsfs"),
])
def test_serve_from_a_bucket_it_cannot_read_exits_2_with_one_error_line(s3_endpoint, tmp_path, case, mentions):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_environment(s3_endpoint), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    url = f"s3://{new_bucket(s3_endpoint)}/{PREFIX}"
    if case == "missing bucket":
        url = f"s3://no-such-bucket-here/{PREFIX}"
    elif case == "no credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    elif case == "unreachable endpoint":
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_MAX_ATTEMPTS="1")  # nothing listens there
    elif importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    else:
        url = "gs://some-bucket/releases"
    result = subprocess.run([sys.executable, "-m", "scale_alibi", "serve", "--data", url, "--port", "0"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(output) == 1, output
    assert output[0].startswith("error: ") and mentions in output[0], output


def test_a_store_stopped_mid_serve_is_a_503_with_retry_after_within_seconds_on_every_route(tmp_path, monkeypatch):
    import signal

    from tests.object_store import s3_server_process

    release = make_release(tmp_path / "data", "small", nx=2, ny=1)
    cached = f"/tiles/small/s1/{Z}/{X0}/{Y0}.png"
    routes = [f"/tiles/small/s2/{Z}/{X0}/{Y0}.png", f"/triplets/small/{Z}/{X0 + 1}/{Y0}",
              "/shards/small/0.tar?shard_size=1"]
    with s3_server_process() as (endpoint, moto):
        for key, value in s3_environment(endpoint).items():
            monkeypatch.setenv(key, value)
        url = f"s3://{new_bucket(endpoint)}/{PREFIX}"
        upload(release.root, url)
        with ServerProcess(url) as server:
            assert raw_get(server.url, cached)[0] == 200
            moto.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
            try:
                for target in routes:
                    t0 = time.monotonic()
                    status, headers, body = raw_get(server.url, target)
                    elapsed = time.monotonic() - t0
                    assert status == 503 and headers.get("retry-after") == "1", (target, status, headers)
                    assert "did not answer" in json.loads(body)["detail"], target
                    assert elapsed < 9, (target, elapsed)  # 2 tries of a 2 s read timeout, with backoff
                assert raw_get(server.url, cached)[2] == release.tile_path("s1", Z, X0, Y0).read_bytes()
            finally:
                moto.send_signal(signal.SIGCONT)
            for target in routes:  # the store answers again: so does the server, without a restart
                assert raw_get(server.url, target)[0] == 200, target


def test_serve_from_a_store_that_accepts_and_never_answers_exits_2_with_one_line_within_seconds(tmp_path):
    from tests.object_store import silent_endpoint

    with silent_endpoint() as endpoint:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(s3_environment(endpoint))
        t0 = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "scale_alibi", "serve", "--data", f"s3://b/{PREFIX}",
                                 "--port", "0"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        elapsed = time.monotonic() - t0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(output) == 1, output
    assert output[0].startswith("error: cannot read s3://b/") and "ReadTimeoutError" in output[0], output
    assert elapsed < 30, elapsed  # 2 tries of a 2 s read timeout and the interpreter's start, not minutes
