"""curate build vs a per-tile rio-tiler baseline on the synthetic world, side by side in one run.

Both produce the same PNG tiles (same zoom, layers, scenes, resampling family, PNG encoder and
level), restricted to one core (one process, one thread; CPU affinity pinned to one core), and
the baseline keeps one warm GDAL cache. The baseline runs after the project's one-core build in the
same process, so it allocates under the same allocator setting (freed memory kept in the heap,
scale_alibi.contract.host_memory, which the build applies). Reported: PNG tiles/s, HTTP requests and bytes fetched
from the world's file server; then the project on all cores, and its cost per tile from ~100 to
several thousand tiles.

    python benchmarks/build_vs_riotiler.py [--zoom 17] [--scale-zoom 18]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GDAL_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from shapely.geometry import box  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _pin(cores: set[int]) -> None:
    try:
        os.sched_setaffinity(0, cores)
    except (AttributeError, OSError):
        pass


def project(world, out: Path, zoom: int, region, scheduler: str, workers: int | None = None) -> dict:
    """One build; returns tiles (PNG files), seconds, requests, bytes."""
    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

    shutil.rmtree(out, ignore_errors=True)
    world.files.reset_stats()
    t0 = time.perf_counter()
    result = build_release(out, resolve_request(zoom=zoom, region=region, release="bench", catalog=world.stac_url),
                           RunOptions(signer="none", scheduler=scheduler, workers=workers, progress=False, echo=lambda m: None))
    dt = time.perf_counter() - t0
    stats = world.files.stats()
    from scale_alibi.contract.release import Release

    return {"tiles": result.triplets * 7, "seconds": dt, **stats, "release": Release(Path(out), "bench")}


def baseline(world, release, zoom: int) -> dict:
    """rio-tiler Reader.tile per PNG tile, the scenes the project chose, a warm GDAL cache."""
    import pystac_client
    import rasterio
    from rio_tiler.io import Reader
    from rio_tiler.mosaic import mosaic_reader

    from scale_alibi.contract.release import HIRES_CHILDREN
    from scale_alibi.curate.encode import encode_png, rgb8
    from scale_alibi.curate.reader import GDAL_ENV

    rows = release.read_manifest().to_pylist()
    client = pystac_client.Client.open(world.stac_url)
    hrefs = {}
    for coll in ("sentinel-2-l2a", "sentinel-1-rtc", "naip"):
        for it in client.search(collections=[coll], bbox=list(world.bbox)).items():
            hrefs[it.id] = {k: a.href for k, a in it.assets.items()}

    def read(href, x, y, z, indexes=None, method="bilinear"):
        with Reader(href) as r:
            return r.tile(x, y, z, tilesize=256, indexes=indexes, reproject_method=method)

    def mosaic(assets, x, y, z, **kw):
        img, _ = mosaic_reader(assets, read, x, y, z, threads=0, **kw)
        return np.moveaxis(img.data, 0, -1)

    world.files.reset_stats()
    n = 0
    t0 = time.perf_counter()
    with rasterio.Env(**GDAL_ENV):
        for r in rows:
            z, x, y = r["z"], r["x"], r["y"]
            s2 = mosaic([hrefs[i]["visual"] for i in r["s2_items"]], x, y, z, indexes=[1, 2, 3])
            encode_png(rgb8("s2", s2))
            vv = mosaic([hrefs[i]["vv"] for i in r["s1_items"]], x, y, z)
            vh = mosaic([hrefs[i]["vh"] for i in r["s1_items"]], x, y, z)
            encode_png(rgb8("s1", np.concatenate([vv, vh], -1)))
            naip = [hrefs[i]["image"] for i in r["naip_items"]]
            encode_png(rgb8("naip", mosaic(naip, x, y, z, indexes=[1, 2, 3], method="average")))
            for dx, dy in HIRES_CHILDREN:
                encode_png(rgb8("naip", mosaic(naip, 2 * x + dx, 2 * y + dy, z + 1, indexes=[1, 2, 3])))
            n += 7
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": dt, **world.files.stats()}


def _line(name: str, r: dict) -> str:
    return (f"{name:<34} {r['tiles']:>6} tiles {r['seconds']:>7.1f} s {r['tiles'] / r['seconds']:>8.1f} tiles/s "
            f"{r['requests']:>6} requests {r['bytes'] / 1e6:>8.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoom", type=int, default=17, help="zoom of the side-by-side comparison")
    ap.add_argument("--scale-zoom", type=int, default=18, help="zoom of the cost-per-tile sweep")
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()

    from scale_alibi.devworld import DEFAULT_WORLD, build_world, default_world_dir, start_world

    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    world = start_world(build_world(default_world_dir(DEFAULT_WORLD), DEFAULT_WORLD))
    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        region = box(*world.bbox)
        _pin({min(all_cores)})
        print(f"world {world.bbox}, zoom {args.zoom}; one core, one process, one thread")
        proj1 = project(world, tmp / "one", args.zoom, region, "synchronous")
        base = baseline(world, proj1["release"], args.zoom)
        print(_line("rio-tiler per tile (anchor)", base))
        print(_line("curate build (project)", proj1))
        print(f"ratio: {proj1['tiles'] / proj1['seconds'] / (base['tiles'] / base['seconds']):.2f}x tiles/s, "
              f"{proj1['requests'] / max(base['requests'], 1):.2f}x requests, {proj1['bytes'] / max(base['bytes'], 1):.2f}x bytes")
        _pin(all_cores)
        allc = project(world, tmp / "all", args.zoom, region, None, workers=len(all_cores))
        print(_line(f"curate build, {len(all_cores)} cores (local Dask)", allc))
        print(f"all cores vs one: {allc['tiles'] / allc['seconds'] / (proj1['tiles'] / proj1['seconds']):.2f}x")
        if not args.skip_scale:
            _pin({min(all_cores)})
            print(f"cost per tile vs size (zoom {args.scale_zoom}, one core):")
            w, s, e, n = world.bbox
            for frac in (0.12, 0.35, 1.0):
                cx, cy = (w + e) / 2, (s + n) / 2
                sub = box(cx - (e - w) * frac / 2, cy - (n - s) * frac / 2, cx + (e - w) * frac / 2, cy + (n - s) * frac / 2)
                r = project(world, tmp / f"scale{frac}", args.scale_zoom, sub, "synchronous")
                print(f"  {r['tiles']:>6} tiles: {1000 * r['seconds'] / max(r['tiles'], 1):6.2f} ms/tile, "
                      f"{r['bytes'] / max(r['tiles'], 1) / 1e3:7.1f} kB fetched/tile")
    finally:
        world.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
