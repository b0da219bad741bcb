"""A release built into a bucket (`curate build --out s3://...`) and served from it (`curate serve
--data s3://...`): the same tiles and the same training shard, byte for byte, as the release built
into a directory and served from there; the loader trains from either alike."""

from __future__ import annotations

import httpx
import pytest
from shapely.geometry import box

from scale_alibi.contract.release import Release
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
from scale_alibi.serve.process import ServerProcess

QUIET = {"signer": "none", "progress": False, "echo": lambda m: None, "scheduler": "synchronous"}
BUILD = {"zoom": 16, "release": "mid", "metatile_levels": 1}


@pytest.fixture
def both(world, s3_bucket, tmp_path):
    """(local release, server over the local directory, server over the bucket), one release built twice."""
    w, s, e, n = world.bbox
    region = box(w + 0.3 * (e - w), s + 0.3 * (n - s), w + 0.7 * (e - w), s + 0.7 * (n - s))
    build_release(tmp_path, resolve_request(region=region, catalog=world.stac_url, **BUILD), RunOptions(**QUIET))
    build_release(f"{s3_bucket}/releases", resolve_request(region=region, catalog=world.stac_url, **BUILD),
                  RunOptions(**QUIET))
    with ServerProcess(tmp_path) as local, ServerProcess(f"{s3_bucket}/releases") as bucket:
        yield Release(tmp_path, "mid"), local, bucket


def test_a_release_built_into_a_bucket_is_served_from_it_as_from_a_directory(both):
    release, local, bucket = both
    rows = release.read_manifest().to_pylist()
    assert len(rows) >= 4
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{bucket.url}/releases").json() == client.get(f"{local.url}/releases").json()
        for row in rows[:3]:
            for layer in ("s1", "s2", "naip"):
                path = f"/tiles/mid/{layer}/{row['z']}/{row['x']}/{row['y']}.png"
                got = client.get(bucket.url + path)
                assert got.status_code == 200 and got.content == release.tile_path(layer, row["z"], row["x"], row["y"]).read_bytes()
        shard = "/shards/mid/0.tar?split=train&shard_size=4&seed=3&epoch=1"
        from_bucket, from_disk = client.get(bucket.url + shard), client.get(local.url + shard)
        assert from_bucket.status_code == from_disk.status_code == 200
        assert from_bucket.content == from_disk.content and len(from_bucket.content) > 100_000


def test_the_loader_reads_the_same_triplets_from_the_bucket_server(both):
    from scale_alibi.model.data.loader import TripletStream

    _, local, bucket = both
    config = {"split": "train", "shard_size": 4, "seed": 3, "decode": False}
    first = [(s["z"], s["x"], s["y"], s["png"]["naip"]) for s in TripletStream(bucket.url, "mid", **config)]
    again = [(s["z"], s["x"], s["y"], s["png"]["naip"]) for s in TripletStream(local.url, "mid", **config)]
    assert first == again and len(first) >= 3
