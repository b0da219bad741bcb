"""Does `curate build` scale with cores? The synthetic world's COGs served by nginx (Range requests,
sendfile: almost no CPU), so that the figures are the build's alone, side by side in one run:

- the one-process run (`--scheduler synchronous`, one thread): the anchor for CPU per tile;
- local Dask with 1 worker, then with N workers (default 2), each one thread;
- the machine's own ceiling: N one-process builds of the same area at once, each in its own
  process (no Dask, nothing shared but the machine). Their combined tiles/s over the one-process
  run's is what N cores of this machine give this work (memory bandwidth, caches, the kernel's
  page zeroing and file system are shared); the N-worker build is reported against it too.

Reported: wall-clock tiles/s and the speed-up of N workers over 1 (goal >= 1.7x for 2), and
CPU-seconds per tile summed over every process of the build (this driver process with the Dask
scheduler in it, the nannies and the workers; not nginx, the STAC server or the idle file
server) as a ratio to the one-process run (goal <= 1.15x); with --small-fraction, also the CPU per
tile between a smaller and the full build, which leaves out what a build costs whatever its size
(Dask's start-up: the workers' imports, the cluster). CPU is sampled every 200 ms per
process (psutil), so a worker that exits is counted up to its last sample. Every run starts with
this process's GDAL HTTP cache emptied, so the one-process run fetches the COGs as each Dask
worker does.

    python benchmarks/build_scaling.py [--zoom 18] [--workers 2] [--repeats 3] [--small-fraction 0.5] [--cold]

The default zoom is 18 (1,089 tiles, 7,210 PNGs: about 18 s on one core, 10 s on two): a Dask build
pays a fixed start-up before its first metatile starts (the cluster's start-up, its server process
importing `distributed` and the build, the first searches), whatever its size; at z17 (1,701 PNGs,
about 4 s on two workers) it is a large share of the 2-worker build's wall time. Users' builds run for
minutes to hours, where it is nothing; `--zoom 17` shows the small-build figure. The builds run one
after another in this process, as in a notebook: the worker forkserver the first Dask build starts
is kept by the later ones (scale_alibi/curate/pipeline/local_cluster.py), so the best of
--repeats is a build that does not pay its imports; `--cold` starts it anew for every build, as
`curate build` in a new process does.

Needs Debian `nginx-light`. Best of --repeats for each configuration, interleaved: the fastest run for
tiles/s, the lowest CPU per tile for CPU (each figure's own best: a busy machine only ever adds to
either); beside each best, how much longer the same configuration's slowest run took: the machine's
noise, to read the ratios by. The load average before the runs is printed first. Every build
writes its own directory, all removed at the end: ext4 skips inodes freed in the last minute when it
allocates new ones, so deleting the last build's 7,000 files would make the next build's file
creation cost more kernel CPU than its own.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GDAL_NUM_THREADS", "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
from shapely.geometry import box  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import Nginx, wait_http  # noqa: E402


class TreeCpu:
    """CPU-seconds (user + system) of this process and every descendant started after `start()`,
    sampled in a thread; processes that existed before (servers) are left out, and so is the
    sampling thread's own CPU (listing every process of a busy machine is not free)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.me = psutil.Process()
        self.excluded: set[int] = set()
        self.last: dict[int, float] = {}
        self.base = 0.0
        self.own = 0.0  # CPU-seconds of the sampling thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        procs = [self.me] + [p for p in self.me.children(recursive=True) if p.pid not in self.excluded]
        for p in procs:
            try:
                t = p.cpu_times()
                self.last[p.pid] = t.user + t.system
            except psutil.Error:
                pass  # exited between listing and reading: its last sample stands

    def start(self) -> None:
        self.excluded = {p.pid for p in self.me.children(recursive=True)}
        t = self.me.cpu_times()
        self.base = t.user + t.system
        self.last = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.thread_time()
        while not self._stop.wait(self.interval_s):
            self._sample()
        self.own = time.thread_time() - t0

    def stop(self) -> float:
        """CPU-seconds since start(), all processes of the build."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()
        return sum(self.last.values()) - self.base - self.own


@contextmanager
def world_on_nginx(tmp: Path) -> Iterator[tuple]:
    """The default synthetic world, its asset hrefs pointing at nginx serving its COGs from `tmp`:
    yields (world, nginx URL). Exits with one line when nginx is not installed."""
    if shutil.which("nginx") is None:
        sys.exit("error: nginx not found; apt-get install -y nginx-light")
    from scale_alibi.devworld import DEFAULT_WORLD, build_world, default_world_dir, start_world

    world_dir = build_world(default_world_dir(DEFAULT_WORLD), DEFAULT_WORLD)
    nginx = Nginx(world_dir / "files", tmp, core=None)
    world = None
    try:
        world = start_world(world_dir, hrefs_url=nginx.url)
        sample = next(p for p in (world_dir / "files").rglob("*.tif"))
        wait_http(nginx.url + "/" + sample.relative_to(world_dir / "files").as_posix())
        yield world, nginx.url
    finally:
        if world is not None:
            world.stop()
        nginx.stop()


def centred(bbox: tuple[float, float, float, float], fraction: float):
    """The box of `fraction` of `bbox`'s area, centred in it."""
    w, s, e, n = bbox
    side = fraction ** 0.5 / 2
    return box((w + e) / 2 - (e - w) * side, (s + n) / 2 - (n - s) * side,
               (w + e) / 2 + (e - w) * side, (s + n) / 2 + (n - s) * side)


def clear_gdal_http_cache() -> None:
    """Empty this process's GDAL /vsicurl/ block cache (GDAL_ENV keeps 512 MiB of it, the whole
    world): the one-process run in this process would otherwise read its COGs from memory from its
    second run on, while every Dask worker is a new process that fetches them."""
    import ctypes

    import rasterio  # noqa: F401  (loads libgdal)

    with open("/proc/self/maps") as maps:
        lib = next((line.split()[-1] for line in maps if "libgdal" in line), None)
    if lib is not None:
        ctypes.CDLL(lib).VSICurlClearCache()


def build(world_stac: str, out: Path, zoom: int, region, scheduler: str, workers: int | None, cpu: TreeCpu,
          cold: bool) -> dict:
    """One build into `out` (a new directory); tiles (PNG files), wall seconds, CPU-seconds over all its
    processes. `cold`: its workers' forkserver started anew, as in a new process."""
    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
    from scale_alibi.curate.pipeline.local_cluster import stop_worker_forkserver

    clear_gdal_http_cache()
    if cold:
        stop_worker_forkserver()
    cpu.start()
    t0 = time.perf_counter()
    result = build_release(out, resolve_request(zoom=zoom, region=region, release="bench", catalog=world_stac),
                           RunOptions(signer="none", scheduler=scheduler, workers=workers, progress=False,
                                      echo=lambda m: None))
    seconds = time.perf_counter() - t0
    return {"tiles": result.triplets * 7, "seconds": seconds, "cpu": cpu.stop()}


# One one-process build in its own interpreter: imports first, then waits for a line on stdin, so that
# the copies start building together; prints its tiles, build seconds and CPU-seconds (its threads too).
ONE_PROCESS_BUILD = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from shapely.geometry import box
from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request
request = resolve_request(zoom=int(sys.argv[3]), region=box(*map(float, sys.argv[5].split(","))), release="bench",
                          catalog=sys.argv[4])
sys.stdin.readline()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
result = build_release(sys.argv[2], request, RunOptions(signer="none", scheduler="synchronous", progress=False,
                                                        echo=lambda m: None))
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(result.triplets * 7, time.perf_counter() - t0, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
"""


def copies_at_once(world_stac: str, outs: list[Path], zoom: int, region) -> dict:
    """len(outs) one-process builds of `region` at once, each in its own process: tiles of all, wall
    seconds from the common start to the last one's end, CPU-seconds of all."""
    import subprocess

    bbox = ",".join(repr(v) for v in region.bounds)
    procs = [subprocess.Popen([sys.executable, "-c", ONE_PROCESS_BUILD, str(ROOT), str(out), str(zoom), world_stac, bbox],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for out in outs]
    time.sleep(5.0)  # every copy has imported and waits (a second or two on a loaded machine)
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("\n")
        p.stdin.flush()
    results = []
    for p in procs:
        stdout, _ = p.communicate(timeout=3600)
        if p.returncode:
            sys.exit(f"error: a one-process build copy exited with {p.returncode}")
        tiles, seconds, cpu = stdout.split()
        results.append((int(tiles), float(seconds), float(cpu)))
    return {"tiles": sum(r[0] for r in results), "seconds": max(r[1] for r in results),
            "cpu": sum(r[2] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoom", type=int, default=18)
    ap.add_argument("--workers", type=int, default=2, help="Dask workers of the scaled run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small-fraction", type=float, default=0.5,
                    help="area of a second, smaller build per configuration (0: none): the CPU per tile "
                         "between the two sizes leaves out what a build costs whatever its size")
    ap.add_argument("--cold", action="store_true",
                    help="start every Dask build's worker forkserver anew, as `curate build` in a new process does "
                         "(default: kept from the previous build of this process, as in a notebook)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        with world_on_nginx(tmp) as (world, nginx_url):
            scale(args, world, nginx_url, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scale(args, world, nginx_url: str, tmp: Path) -> None:
    region = box(*world.bbox)
    small = centred(world.bbox, args.small_fraction)
    cpu = TreeCpu()
    runs = {"one process (synchronous)": ("synchronous", None), "Dask, 1 worker": ("local", 1),
            f"Dask, {args.workers} workers": ("local", args.workers)}
    ceiling = f"{args.workers} one-process builds at once"
    best: dict[str, dict] = {}
    slowest: dict[str, float] = {}  # wall seconds of each configuration's slowest run: the machine's noise
    cpu_per_tile: dict[str, float] = {}  # each configuration's lowest CPU-seconds per tile over its runs
    marginal: dict[str, float] = {}  # CPU-seconds per tile between the small and the full build
    outs = (tmp / f"out-{i}" for i in itertools.count())
    print(f"world {world.bbox}, zoom {args.zoom}; COGs from nginx {nginx_url}; {os.cpu_count()} cores; "
          f"worker forkserver {'started anew for every build' if args.cold else 'kept between builds'}; "
          f"load average before the runs {os.getloadavg()[0]:.2f} (1 min)", flush=True)

    def keep(name: str, r: dict, rep: int, note: str = "") -> None:
        print(f"  run {rep + 1} {name:<32} {r['tiles']:>6} tiles {r['seconds']:7.1f} s wall "
              f"{1e3 * r['cpu'] / r['tiles']:7.2f} ms CPU/tile{note}", flush=True)
        if name not in best or r["seconds"] < best[name]["seconds"]:
            best[name] = r
        slowest[name] = max(slowest.get(name, 0.0), r["seconds"])
        cpu_per_tile[name] = min(cpu_per_tile.get(name, float("inf")), r["cpu"] / r["tiles"])

    for rep in range(args.repeats):  # interleaved: background load hits every configuration alike
        for name, (scheduler, workers) in runs.items():
            r = build(world.stac_url, next(outs), args.zoom, region, scheduler, workers, cpu, args.cold)
            keep(name, r, rep)
            if args.small_fraction > 0:
                q = build(world.stac_url, next(outs), args.zoom, small, scheduler, workers, cpu, args.cold)
                per_tile = (r["cpu"] - q["cpu"]) / max(r["tiles"] - q["tiles"], 1)
                print(f"  run {rep + 1} {name:<32} {q['tiles']:>6} tiles {q['seconds']:7.1f} s wall "
                      f"{1e3 * q['cpu'] / q['tiles']:7.2f} ms CPU/tile (smaller area); between the two: "
                      f"{1e3 * per_tile:.2f} ms CPU/tile", flush=True)
                marginal[name] = min(marginal.get(name, float("inf")), per_tile)
        keep(ceiling, copies_at_once(world.stac_url, [next(outs) for _ in range(args.workers)], args.zoom, region), rep)
    one, w1, wn = (best[n] for n in runs)
    print(f"\nbest of {args.repeats}:")
    for name, r in best.items():
        print(f"  {name:<32} {r['tiles'] / r['seconds']:8.1f} tiles/s  {1e3 * cpu_per_tile[name]:7.2f} ms CPU/tile "
              f"(all processes); its slowest run took {slowest[name] / r['seconds']:.2f}x as long")

    def rate(r: dict) -> float:
        return r["tiles"] / r["seconds"]

    print(f"wall-clock: {args.workers} workers {rate(wn) / rate(w1):.2f}x 1 worker (goal >= 1.7x for 2)")
    print(f"  the machine's ceiling: {ceiling} give {rate(best[ceiling]) / rate(one):.2f}x the tiles/s of one; "
          f"{args.workers} Dask workers reach {rate(wn) / rate(best[ceiling]):.0%} of it")
    for name in [*list(runs)[1:], ceiling]:
        ratio = cpu_per_tile[name] / cpu_per_tile[list(runs)[0]]
        print(f"CPU per tile: {name} {ratio:.2f}x the one-process run" + ("" if name == ceiling else " (goal <= 1.15x)"))
        if name in marginal:
            print(f"  without what a build costs whatever its size (between the two areas): "
                  f"{1e3 * marginal[name]:.2f} vs {1e3 * marginal[list(runs)[0]]:.2f} ms, "
                  f"{marginal[name] / marginal[list(runs)[0]]:.2f}x")


if __name__ == "__main__":
    main()
