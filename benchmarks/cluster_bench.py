"""Memory of a Dask worker during `curate build`: peak RSS of each `dask worker --nthreads 1` process.

    python benchmarks/cluster_bench.py [--zoom 17] [--workers 2] [--memory-limit 2GiB]

Builds the synthetic world (its STAC API and COGs on loopback) on a real `dask scheduler` and
`dask worker` processes, with the default metatile (8x8 tiles: the largest block one task
reprojects, whatever the zoom), sampling every worker process's RSS every 20 ms. The anchor is
the same worker idle after start-up (the interpreter and its imports). The limit recommended in
docs/scaling.md is checked against the peak.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dask.utils import parse_bytes  # noqa: E402
from shapely.geometry import box  # noqa: E402

from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request  # noqa: E402
from scale_alibi.curate.reader import GDAL_ENV  # noqa: E402
from scale_alibi.devworld import DEFAULT_WORLD, build_world, default_world_dir, start_world  # noqa: E402
from tests.dask_cluster import dask_cluster, process_tree  # noqa: E402


def worker_rss(cluster) -> list[int]:
    """RSS of each worker process (the nanny that supervises it excluded)."""
    return [p.memory_info().rss for proc in cluster.workers for p in process_tree(proc.pid)[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoom", type=int, default=17)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="2GiB", help="passed to every `dask worker`")
    args = ap.parse_args()

    world = start_world(build_world(default_world_dir(DEFAULT_WORLD), DEFAULT_WORLD))
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp, \
                dask_cluster(args.workers, args.memory_limit, Path(tmp) / "dask") as cluster:
            time.sleep(2)  # let the workers settle after joining
            idle = max(worker_rss(cluster))
            peak, result = idle, []
            build = threading.Thread(target=lambda: result.append(build_release(Path(tmp) / "out", resolve_request(zoom=args.zoom, region=box(*world.bbox), release="mem", catalog=world.stac_url),
                                                                                RunOptions(scheduler=cluster.address, signer="none", progress=False, echo=lambda m: None))))
            t = time.perf_counter()
            build.start()
            while build.is_alive():
                peak = max([peak, *worker_rss(cluster)])
                time.sleep(0.02)
            seconds = time.perf_counter() - t
    finally:
        world.stop()
    if not result:
        sys.exit("error: the build failed; run it alone to see why")
    r = result[0]
    limit = parse_bytes(args.memory_limit)
    caches = int(GDAL_ENV["GDAL_CACHEMAX"]) + int(GDAL_ENV["CPL_VSIL_CURL_CACHE_SIZE"])
    print(f"world at z{args.zoom}: {r.triplets} triplets in {r.metatiles} metatiles (up to 64 tiles each), "
          f"{args.workers} x `dask worker --nthreads 1 --memory-limit {args.memory_limit}`, {seconds:.1f}s")
    print(f"  peak worker RSS {peak / 2**20:,.0f} MiB vs anchor idle worker {idle / 2**20:,.0f} MiB: "
          f"ratio {peak / idle:.2f}x; {(peak - idle) / 2**20:,.0f} MiB for one metatile task")
    print(f"  GDAL's cache ceilings (block cache + vsicurl cache, scale_alibi/curate/reader.py): {caches / 2**20:,.0f} MiB; "
          f"peak + ceilings = {(peak + caches) / 2**20:,.0f} MiB")
    print(f"  --memory-limit {args.memory_limit} = {limit / 2**20:,.0f} MiB: peak is {peak / limit:.0%} of it, "
          f"peak + ceilings {(peak + caches) / limit:.0%} (the nanny restarts a worker at 95%)")


if __name__ == "__main__":
    main()
