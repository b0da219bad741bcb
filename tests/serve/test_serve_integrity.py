"""The server never sends bytes whose sha256 differs from the manifest's: a damaged file is a JSON
500 naming `curate verify --repair` (never the bad bytes with an immutable cache header), and the
file is served again once repaired."""

from __future__ import annotations

import hashlib
import os

import httpx
import numpy as np

from scale_alibi.contract.release import epoch_permutation, triplet_files
from scale_alibi.serve.process import ServerProcess
from tests.release_factory import make_release


def test_a_damaged_file_is_a_500_naming_the_repair_and_is_served_again_once_repaired(tmp_path):
    rel = make_release(tmp_path, "r", nx=2, ny=2)
    rows = rel.read_manifest().to_pylist()
    victim = 2  # a triplet whose s2 tile is damaged after the server read it once
    z, x, y = rows[victim]["z"], rows[victim]["x"], rows[victim]["y"]
    path = rel.path / triplet_files(rows[victim])[1][0]
    good = path.read_bytes()
    tile = f"/tiles/r/s2/{z}/{x}/{y}.png"
    shard = int(np.flatnonzero(epoch_permutation(len(rows), 0, 0) == victim)[0])
    urls = [tile, f"/triplets/r/{z}/{x}/{y}", f"/shards/r/{shard}.tar?shard_size=1&split=all"]
    with ServerProcess(tmp_path, cache_mb=0) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        first = client.get(tile)
        assert first.status_code == 200 and first.content == good
        assert first.headers["etag"] == f'"{rows[victim]["hash_s2"]}"'
        for damage in (good[: len(good) // 2], good[:200] + bytes([good[200] ^ 1]) + good[201:]):
            path.write_bytes(damage)  # truncated, then one flipped bit (same size)
            for url in urls:
                r = client.get(url)
                assert r.status_code == 500, (url, r.status_code)
                assert "curate verify --data DATA --release r --repair" in r.json()["detail"]
                assert "immutable" not in r.headers.get("cache-control", "")
                assert damage[:64] not in r.content
        path.write_bytes(good)  # what `curate verify --repair` does
        for url in urls:
            assert client.get(url).status_code == 200, url
        assert client.get(tile).content == good


def flip_bit_in_place(path, offset: int) -> None:
    """Flip one bit of `path` where it lies (same inode, same size) and put its mtime back: silent
    corruption, invisible to anything that looks at the file's stat."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_a_bit_flip_that_keeps_size_mtime_and_inode_after_a_file_was_verified_is_never_served(tmp_path):
    rel = make_release(tmp_path, "r", nx=2, ny=2)
    rows = rel.read_manifest().to_pylist()
    victim = 1
    z, x, y = rows[victim]["z"], rows[victim]["x"], rows[victim]["y"]
    path = rel.path / triplet_files(rows[victim])[2][0]  # its naip tile
    good = path.read_bytes()
    tile = f"/tiles/r/naip/{z}/{x}/{y}.png"
    shard = int(np.flatnonzero(epoch_permutation(len(rows), 0, 0) == victim)[0])
    urls = [tile, f"/triplets/r/{z}/{x}/{y}", f"/shards/r/{shard}.tar?shard_size=1&split=all"]
    with ServerProcess(tmp_path, cache_mb=0) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        for url in urls:  # each route reads (and verifies) the file once, with its good bytes
            r = client.get(url)
            assert r.status_code == 200, url
            assert good in r.content, url
        flip_bit_in_place(path, len(good) // 2)
        bad = path.read_bytes()
        assert bad != good and hashlib.sha256(bad).hexdigest() != rows[victim]["hash_naip"]  # the oracle
        for _ in range(2):  # and again: a refusal is not remembered as a verdict either way
            for url in urls:
                r = client.get(url)
                assert r.status_code == 500, (url, r.status_code)
                assert "curate verify --data DATA --release r --repair" in r.json()["detail"]
                assert "immutable" not in r.headers.get("cache-control", "")
                assert bad[len(good) // 2 - 32 : len(good) // 2 + 32] not in r.content
        flip_bit_in_place(path, len(good) // 2)  # flipped back: the manifest's bytes again
        for url in urls:
            r = client.get(url)
            assert r.status_code == 200 and good in r.content, url
