"""`curate serve` from a bucket vs from a local directory: tile requests/s and shard MB/s.

    python benchmarks/bucket_bench.py [--triplets 64] [--seconds 10] [--connections 16]

One synthetic release is written to a temporary directory and uploaded to moto_server (in-memory
S3, one Python process) on loopback; `curate serve` (one worker, pinned to core 1) serves it
from the directory and from the bucket. Tiles: wrk (core 0) requests every tile of the release
in random order, with the tile cache off (`--cache-mb 0`: each request reads the file, or GETs
the object, or a range of the release's PMTiles archive: `curate pack` of the same release, also
uploaded), then from the bucket with the cache on (after one warming pass). Shards: curl
(core 0) downloads one shard holding every triplet, best of --repeats.

The store's own rate is printed first (the same GETs straight from a client, as many in flight as
the server's fetch pool): it bounds the server's uncached figures. moto answers a GET in
milliseconds on loopback, but a range of a large object (an archive here) costs it more than a
whole small object (compare the two lines); a store across a network answers each
GET later, so there the uncached figures are lower and bound by latency: the shard figure then
scales with the GETs in flight (serve/bucket.py: FETCH_THREADS). Needs `wrk` and `curl`.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale_bench import wrk_random  # noqa: E402
from serve_bench import CLIENT_CORE, SERVER_CORE, curl_mbps  # noqa: E402

from scale_alibi.contract.archive import Archive  # noqa: E402
from scale_alibi.contract.release import LAYERS, Release, triplet_files, triplet_tiles  # noqa: E402
from scale_alibi.contract.storage import remote_filesystem  # noqa: E402
from scale_alibi.serve.bucket import FETCH_THREADS  # noqa: E402
from scale_alibi.serve.process import ServerProcess  # noqa: E402
from tests.object_store import new_bucket, s3_environment, s3_server  # noqa: E402
from tests.release_factory import make_release  # noqa: E402


def upload(local_dir: Path, url: str) -> None:
    """Every file under `local_dir` to the same relative keys under `url` (the manifest last)."""
    fs, root = remote_filesystem(url)
    files = sorted((p for p in local_dir.rglob("*") if p.is_file()), key=lambda p: p.name == "manifest.parquet")
    fs.pipe({f"{root}/{p.relative_to(local_dir).as_posix()}": p.read_bytes() for p in files[:-1]})
    fs.pipe_file(f"{root}/{files[-1].relative_to(local_dir).as_posix()}", files[-1].read_bytes())


def store_rate(url: str, reads: list[tuple[str, int | None, int | None]], repeats: int) -> tuple[float, float]:
    """GETs/s and MB/s of `reads` ((key below `url`, first byte, end byte) or the whole object when
    None) made straight to the store, as the server's fetch pool makes them: the ceiling the store
    puts on the server's uncached figures."""
    fs, root = remote_filesystem(url)
    best = (0.0, 0.0)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            size = sum(map(len, pool.map(lambda r: fs.cat_file(f"{root}/{r[0]}", start=r[1], end=r[2]), reads)))
            seconds = time.perf_counter() - t0
            best = max(best, (len(reads) / seconds, size / seconds / 1e6))
    return best


def archive_reads(packed: Path, rows: list[dict]) -> list[tuple[str, int, int]]:
    """(archive key, first byte, end byte) of every tile of the release in its PMTiles archives."""
    archives = {layer: Archive.open(Release(packed, "bench").archive_path(layer)) for layer in LAYERS}
    reads = []
    for row in rows:
        for _, (layer, z, x, y) in triplet_tiles(row["z"], row["x"], row["y"]):
            offset, length = archives[layer].locate(z, x, y)
            reads.append((f"bench/{Release(packed, 'bench').archive_path(layer).name}", offset, offset + length))
    return reads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--triplets", type=int, default=64, help="synthetic release size (a square block)")
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="shard downloads per server (best is kept)")
    args = ap.parse_args()

    side = math.isqrt(args.triplets)
    with tempfile.TemporaryDirectory(prefix="bucket-bench-") as tmp, s3_server() as endpoint:
        os.environ.update(s3_environment(endpoint))
        data = Path(tmp) / "data"
        release = make_release(data, "bench", nx=side, ny=side, heldout_every=0)
        rows = release.read_manifest().to_pylist()
        urls = [f"/tiles/bench/{path}" for row in rows for path, _ in triplet_files(row)]
        mb = sum(p.stat().st_size for p in release.path.rglob("*.png")) / 1e6
        url = f"s3://{new_bucket(endpoint)}/releases"
        upload(data, url)
        packed = Path(tmp) / "packed"  # the same release as PMTiles archives (no tree), in another prefix
        subprocess.run([sys.executable, "-m", "scale_alibi", "pack", "--data", str(data), "--release", "bench",
                        "--out", str(packed)], check=True, capture_output=True, cwd=ROOT)
        packed_url = url.replace("/releases", "/packed")
        upload(packed, packed_url)
        print(f"release: {len(rows)} triplets, {len(urls)} tiles, {mb:.1f} MB; bucket: moto_server on {endpoint}")
        tree_reads = [(f"bench/{path}", None, None) for row in rows for path, _ in triplet_files(row)]
        for what, where, reads in (("tile objects", url, tree_reads),
                                   ("ranges of the PMTiles archives", packed_url, archive_reads(packed, rows))):
            gets, store_mbps = store_rate(where, reads, args.repeats)
            print(f"the store alone, every tile as {what} ({FETCH_THREADS} GETs in flight, best of "
                  f"{args.repeats}): {gets:.0f} GETs/s, {store_mbps:.1f} MB/s")
        shard = f"/shards/bench/0.tar?shard_size={len(rows)}"
        pin = ["taskset", "-c", SERVER_CORE]
        print(f"{'served from':<24} {'tiles req/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'shard MB/s':>11}")
        for label, where, cache_mb in (("directory, no cache", data, 0), ("bucket, no cache", url, 0),
                                       ("bucket PMTiles, no cache", packed_url, 0),
                                       ("bucket, tile cache on", url, 256)):
            with ServerProcess(where, cache_mb=cache_mb, command_prefix=pin) as server, \
                    tempfile.TemporaryDirectory() as work:
                if cache_mb:
                    wrk_random(server.url, urls, Path(work), 2, args.connections)  # warm the cache
                tiles = wrk_random(server.url, urls, Path(work), args.seconds, args.connections)
                mbps, _ = curl_mbps(server.url + shard, args.repeats)
                print(f"{label:<24} {tiles['rps']:>11.0f} {tiles['p50']:>8.1f} {tiles['p99']:>8.1f} "
                      f"{tiles['non2xx']:>8d} {mbps:>11.1f}")
    print(f"(wrk and curl on core {CLIENT_CORE}, the server on core {SERVER_CORE}, moto unpinned)")


if __name__ == "__main__":
    main()
