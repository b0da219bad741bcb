"""Scale: `curate serve` and the loader on a 10^3- vs a 10^6-triplet release, and the CONUS z15 build graph.

    python benchmarks/scale_bench.py [--triplets 1000000] [--anchor 1000] [--seconds 10] [--skip-graph]

Releases: a real manifest (scale_alibi.contract.release.write_manifest) of N triplets at z15, its columns
generated vectorised with distinct sha256-shaped hashes; only the files the benchmark reads exist,
as hard links to a pool of real synthetic PNGs (the loader benchmark's), and their rows carry
those PNGs' true sha256. Both sizes serve the same number of distinct random tiles, so the
server's tile cache behaves alike and what differs is the release's size.

Server (one worker on core 1, wrk on core 0 as in serve_bench.py): start-up until /health
answers, RSS of its process tree once warm, req/s and p99 for random tiles across the whole
release (wrk with a Lua script). Loader: scale_alibi.model.data.loader over the server, triplets/s after the
first batch, and the time to that first batch. Goal: 10^6 within 1.2x of 10^3 in p99, req/s and
loader triplets/s; memory stated per million triplets.

Graph: what `curate build --region conus --zoom 15` plans and would submit, without fetching
anything: tiles, metatiles, search tasks, the pickled task inputs, the driver's peak RSS
(a child process, so the figure is that of planning alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loader_bench import synthetic_png  # noqa: E402
from serve_bench import CLIENT_CORE, SERVER_CORE, wrk  # noqa: E402

from scale_alibi.contract.release import (  # noqa: E402
    HIRES_CHILDREN,
    REQUIRED_COLUMNS,
    TRIPLET_MEMBERS,
    Release,
    content_hash,
    shard_rows,
    write_manifest,
)
from scale_alibi.serve.process import ServerProcess  # noqa: E402

ZOOM, X0, Y0 = 15, 6000, 12000  # a block of z15 tiles over the central US
POOL = 16  # distinct real PNGs behind every file that exists
SHARD_SIZE, BATCH, LOADER_WORKERS, SEED = 32, 16, 2, 0


# ------------------------------------------------------------------------------------ releases

def _hex_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random sha256-shaped hex digests as a fixed-width bytes array (vectorised)."""
    lut = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2").view(np.uint16)
    raw = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    return np.ascontiguousarray(lut[raw]).view("S64").reshape(n)


def _strings(hexes: np.ndarray) -> pa.Array:
    """A fixed-width bytes array as one Arrow string array."""
    arr = pa.array(hexes)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr  # large inputs come back chunked
    return arr.cast(pa.string())


def _tile_path(member: str, z: int, x: int, y: int) -> tuple[str, int, int, int]:
    """(layer, z, x, y) of a triplet member's file."""
    if member.startswith("naip_hires_"):
        dx, dy = HIRES_CHILDREN[int(member[-1])]
        return "naip", z + 1, 2 * x + dx, 2 * y + dy
    return member, z, x, y


class ScaleRelease:
    """A release of n triplets whose manifest is complete but whose files exist only where asked."""

    def __init__(self, root: Path, n: int, name: str = "scale"):
        self.release = Release(root, name)
        self.n = n
        side = math.ceil(math.sqrt(n))
        i = np.arange(n, dtype=np.int64)
        self.x, self.y = X0 + i // side, Y0 + i % side  # x-major: already (z, x, y) order
        # Spatially blocked split (4x4-tile blocks), ~25% held out, as curate build assigns it.
        self.heldout = ((self.x >> 2) * 7 + (self.y >> 2) * 13) % 4 == 0
        self.train_rows = np.flatnonzero(~self.heldout)
        self.hashes = {m: _hex_hashes(np.random.default_rng(k), n) for k, m in enumerate(TRIPLET_MEMBERS)}
        rng = np.random.default_rng(1)
        self.pool = [synthetic_png(rng) for _ in range(POOL)]
        self.pool_dir = root / ".pool"
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        for k, data in enumerate(self.pool):
            (self.pool_dir / f"{k}.png").write_bytes(data)
        self.files = 0

    def materialise(self, rows: np.ndarray) -> None:
        """Give every member of `rows` a file (a hard link into the pool) and its true hash."""
        for row in np.unique(rows).tolist():
            for m, member in enumerate(TRIPLET_MEMBERS):
                k = (row * len(TRIPLET_MEMBERS) + m) % POOL
                path = self.release.tile_path(*_tile_path(member, ZOOM, int(self.x[row]), int(self.y[row])))
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.link(self.pool_dir / f"{k}.png", path)
                    self.files += 1
                self.hashes[member][row] = content_hash(self.pool[k]).encode()

    def tile_url(self, row: int, member: str) -> str:
        layer, z, x, y = _tile_path(member, ZOOM, int(self.x[row]), int(self.y[row]))
        return f"/tiles/{self.release.name}/{layer}/{z}/{x}/{y}.png"

    def write_manifest(self) -> None:
        """The manifest, every column built by Arrow from arrays (no per-row Python)."""
        n = self.n
        as_str = {m: _strings(h) for m, h in self.hashes.items()}
        hires = np.stack([self.hashes[f"naip_hires_{k}"] for k in range(4)], axis=1).reshape(4 * n)
        columns = {
            "z": pa.array(np.full(n, ZOOM, dtype=np.int32)),
            "x": pa.array(self.x),
            "y": pa.array(self.y),
            "split": pa.DictionaryArray.from_arrays(pa.array(self.heldout.astype(np.int8)),
                                                    pa.array(["train", "heldout"])).cast(pa.string()),
            "hash_s1": as_str["s1"], "hash_s2": as_str["s2"], "hash_naip": as_str["naip"],
            "hash_naip_hires": pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * n + 1, 4, dtype=np.int32)),
                                                        _strings(hires)),
        }
        table = pa.table(columns, schema=pa.schema(list(REQUIRED_COLUMNS.items())))
        write_manifest(table, self.release.manifest_path, {"release": self.release.name, "zoom": ZOOM})


def loader_rows(rel: ScaleRelease, triplets: int) -> np.ndarray:
    """Manifest rows of every shard the loader can open while yielding its first `triplets` (prefetch included)."""
    from scale_alibi.model.data.loader import TripletStream
    from scale_alibi.model.data.order import ShardPlan

    shuffle, prefetch = (TripletStream.__init__.__kwdefaults__[k] for k in ("shuffle_buffer", "prefetch"))
    plan = ShardPlan(len(rel.train_rows), SHARD_SIZE, SEED, 0, 1, LOADER_WORKERS, shuffle)
    # Each worker: its share, DataLoader's two batches ahead, the shuffle window and the fetch queue.
    reach = triplets // LOADER_WORKERS + 3 * BATCH + shuffle + prefetch + 2 * SHARD_SIZE
    shards: set[int] = set()
    for w in range(LOADER_WORKERS):
        order = list(plan.worker_order(0, w))
        last = max(s for s, _ in order[:reach])
        mine = sorted({s for s, _ in order})
        shards.update(s for s in mine[: mine.index(last) + 3])
    n = len(rel.train_rows)
    return rel.train_rows[np.concatenate([shard_rows(n, SEED, 0, SHARD_SIZE, s) for s in sorted(shards)])]


def make(root: Path, n: int, tiles: int, loader_triplets: int) -> tuple[ScaleRelease, list[str], float]:
    """A ScaleRelease with the files for `tiles` random tile URLs and the loader's shards; (release, urls, seconds)."""
    t = time.perf_counter()
    rel = ScaleRelease(root, n)
    rng = np.random.default_rng(2)
    picks = rng.choice(n * len(TRIPLET_MEMBERS), size=min(tiles, n * len(TRIPLET_MEMBERS)), replace=False)
    rows, members = picks // len(TRIPLET_MEMBERS), picks % len(TRIPLET_MEMBERS)
    rel.materialise(rows)
    rel.materialise(loader_rows(rel, loader_triplets))
    rel.write_manifest()
    urls = [rel.tile_url(int(r), TRIPLET_MEMBERS[m]) for r, m in zip(rows, members)]
    return rel, urls, time.perf_counter() - t


# ----------------------------------------------------------------------------------- measuring

def peak_rss() -> int:
    """This process's peak resident bytes (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # elsewhere (kilobytes on Linux and BSD)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in procs)


def wrk_random(base: str, urls: list[str], work: Path, seconds: int, connections: int) -> dict:
    """wrk over `urls` in random order (a Lua script picks one per request)."""
    listing = work / "urls.txt"
    listing.write_text("\n".join(urls) + "\n")
    script = work / "random.lua"
    script.write_text(
        f'local paths = {{}}\nfor line in io.lines("{listing}") do paths[#paths + 1] = line end\n'
        "math.randomseed(7)\n"
        'request = function() return wrk.format("GET", paths[math.random(#paths)]) end\n'
    )
    return wrk(base + "/", seconds, connections, script=script)


def loader_rate(url: str, name: str, triplets: int) -> tuple[float, float]:
    """(triplets/s after the first batch, seconds to the first batch) of scale_alibi.model.data.loader over the server."""
    import torch

    from scale_alibi.model.data.loader import TripletStream, make_loader

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = TripletStream(url, name, shard_size=SHARD_SIZE, seed=SEED)
    n, first, t1 = 0, 0.0, 0.0
    for batch in make_loader(ds, BATCH, num_workers=LOADER_WORKERS):
        if not n:
            t1 = time.perf_counter()
            first = t1 - t0
        n += int(batch["z"].shape[0])
        if n >= triplets:
            break
    return (n - BATCH) / (time.perf_counter() - t1), first


def measure(sizes: list[int], args, work: Path) -> list[dict]:
    """Every serving figure for releases of each size: both servers up at once, runs interleaved and
    the best of --repeats kept for each, so background load on a shared machine hits both alike."""
    made, servers, out = [], [], []
    try:
        for n in sizes:
            root = work / f"data-{n}"
            rel, urls, seconds = make(root, n, args.tiles, args.loader_triplets)
            size = rel.release.manifest_path.stat().st_size
            print(f"{n:,} triplets: manifest {size / 1e6:.1f} MB, {rel.files:,} files linked, made in {seconds:.1f}s",
                  flush=True)
            made.append((rel, urls, size))
        for rel, _, _ in made:
            server = ServerProcess(rel.release.root, workers=1, startup_timeout=600,
                                   command_prefix=["taskset", "-c", SERVER_CORE])
            t = time.perf_counter()
            server.start()
            servers.append(server)
            out.append({"n": rel.n, "startup": time.perf_counter() - t, "manifest": 0, "rps": 0.0, "p50": math.inf,
                        "p99": math.inf, "non2xx": 0, "loader": 0.0, "first_batch": math.inf})
        for (_rel, urls, size), server, r in zip(made, servers, out):
            r["manifest"] = size
            wrk_random(server.url, urls, work, 2, args.connections)  # warm-up: page cache, tile cache
        for i in range(args.repeats):
            for (rel, urls, _), server, r in zip(made, servers, out):
                w = wrk_random(server.url, urls, work, args.seconds, args.connections)
                r["rps"], r["non2xx"] = max(r["rps"], w["rps"]), r["non2xx"] + w["non2xx"] + w["timeouts"]
                r["p50"], r["p99"] = min(r["p50"], w["p50"]), min(r["p99"], w["p99"])
                rate, first = loader_rate(server.url, rel.release.name, args.loader_triplets)
                r["loader"], r["first_batch"] = max(r["loader"], rate), min(r["first_batch"], first)
                print(f"  run {i}, {rel.n:,} triplets: {w['rps']:,.0f} req/s, p99 {w['p99']:.1f} ms, "
                      f"loader {rate:.1f} triplets/s", flush=True)
        for server, r in zip(servers, out):
            r["rss"] = tree_rss(server.proc.pid)
    finally:
        for server in servers:
            server.stop()
    return out


# -------------------------------------------------------------------------------- build graph

def conus_graph(region: str, zoom: int) -> dict:
    """Plan `curate build --region R --zoom Z` into the tasks it submits, fetching nothing."""
    from scale_alibi.contract.release import LAYERS
    from scale_alibi.curate.pipeline import MetatileJob, group_metatiles, resolve_request, search_blocks
    from scale_alibi.curate.pipeline.local_output import LocalOutput

    t = time.perf_counter()
    base = peak_rss()
    request = resolve_request(region=region, zoom=zoom)
    params = request.params
    tiles = request.plan()
    planned = time.perf_counter() - t
    metatiles = group_metatiles(tiles, params.metatile_levels)
    blocks = search_blocks(metatiles)
    jobs = [MetatileJob(LocalOutput(Path("/out"), params.release), mt, metatiles[mt], params.min_valid, params.max_gap_days,
                        catalog=request.catalog) for mt in metatiles]
    peak = peak_rss()
    pickled = sum(len(pickle.dumps(j, protocol=5)) for j in jobs)
    return {"tiles": len(tiles), "metatiles": len(metatiles), "search_tasks": len(blocks) * len(LAYERS),
            "tasks": len(metatiles) + len(blocks) * len(LAYERS), "pickled": pickled, "peak_rss": peak,
            "base_rss": base, "plan_s": planned, "seconds": time.perf_counter() - t,
            "max_tiles_per_metatile": max(len(v) for v in metatiles.values())}


def manifest_row(i: int, hexes: list[str]) -> dict:
    """Manifest row `i` shaped as cut_metatile returns it (scale_alibi/curate/pipeline/choose.py `describe_choice`),
    its seven hashes from `hexes[7 i: 7 i + 7]`; row i lies in column 6000 + i // 8 of a z15 block."""
    h = hexes[7 * i: 7 * i + 7]
    return {"z": 15, "x": 6000 + i // 8, "y": 12000 + i % 8, "split": "train", "hash_s1": h[0], "hash_s2": h[1],
            "hash_naip": h[2], "hash_naip_hires": h[3:7],
            "s2_group": "s2/2023-06-05", "s2_items": [f"S2A_MSIL2A_20230605T172901_R055_T13SGV_{i:08d}"],
            "s2_datetime": "2023-06-05T17:29:01+00:00", "s2_valid": 1.0, "s2_cloud_cover": 3.2,
            "s1_group": "s1/2023-06-07/ascending/78", "s1_items": [f"S1A_IW_GRDH_1SDV_20230607T004512_{i:08d}"],
            "s1_datetime": "2023-06-07T00:45:12+00:00", "s1_valid": 1.0, "s1_orbit_state": "ascending",
            "s1_relative_orbit": 78, "naip_group": "naip/2022/tx", "naip_items": [f"tx_m_3510101_ne_14_060_{i:08d}"],
            "naip_datetime": "2022-08-01T00:00:00+00:00", "naip_valid": 1.0, "naip_year": "2022"}


def hex_strings(n: int, seed: int = 3) -> list[str]:
    """n distinct sha256-shaped hex strings."""
    return [h.decode() for h in _hex_hashes(np.random.default_rng(seed), n)]


def row_bytes(rows: int = 64_000) -> float:
    """Python bytes per manifest row held as objects, unpickled one 64-row metatile at a time as results
    arrive: what a driver that kept every row until the end would hold (see benchmarks/manifest_bench.py)."""
    import tracemalloc

    hexes = hex_strings(rows * 7)
    blobs = [pickle.dumps([manifest_row(i, hexes) for i in range(k, k + 64)]) for k in range(0, rows, 64)]
    tracemalloc.start()
    held = [r for blob in blobs for r in pickle.loads(blob)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held) == rows
    return size / rows


# ------------------------------------------------------------------------------------- report

def _ratio(big: float, small: float) -> str:
    return f"{big / small:.2f}x" if small else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--triplets", type=int, default=1_000_000, help="the large release")
    ap.add_argument("--anchor", type=int, default=1_000, help="the small release (the anchor)")
    ap.add_argument("--tiles", type=int, default=4096, help="distinct random tile URLs wrk requests")
    ap.add_argument("--loader-triplets", type=int, default=384)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per release; the best is kept")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--region", default="conus")
    ap.add_argument("--zoom", type=int, default=15)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--skip-graph", action="store_true")
    ap.add_argument("--graph-json", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.graph_json:
        print(json.dumps({**conus_graph(args.region, args.zoom), "row_bytes": row_bytes()}))
        return
    for tool in ("wrk", "taskset"):
        if not args.skip_serve and shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found; apt-get install -y wrk util-linux")

    if not args.skip_serve:
        work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
        try:
            small, big = measure([args.anchor, args.triplets], args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\nserver and loader, {big['n']:,} triplets (project) vs {small['n']:,} (anchor); "
              f"wrk -t1 -c{args.connections} -d{args.seconds}s on core {CLIENT_CORE}, server on core {SERVER_CORE}, "
              f"{args.tiles} random tiles, best of {args.repeats} interleaved runs")
        rows = [("start-up until /health (s)", "startup", 1), ("manifest (MB)", "manifest", 1e-6),
                ("server RSS (MiB)", "rss", 1 / 2**20), ("tiles req/s", "rps", 1), ("tiles p50 (ms)", "p50", 1),
                ("tiles p99 (ms)", "p99", 1), ("non-2xx", "non2xx", 1),
                ("loader triplets/s (after 1st batch)", "loader", 1), ("loader 1st batch (s)", "first_batch", 1)]
        for label, key, scale in rows:
            print(f"  {label:38s} {big[key] * scale:12,.2f}  vs anchor {small[key] * scale:12,.2f}   "
                  f"ratio {_ratio(big[key], small[key])}")
        per_million = (big["rss"] - small["rss"]) / (big["n"] - small["n"]) * 1e6
        print(f"  server memory: {per_million / 2**20:,.0f} MiB per million triplets "
              f"(RSS difference / triplet difference)")
        flat = [("p99", small["p99"] and big["p99"] / small["p99"] <= 1.2),
                ("req/s", small["rps"] / big["rps"] <= 1.2), ("loader", small["loader"] / big["loader"] <= 1.2)]
        print("  goal (10^6 within 1.2x of 10^3): " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in flat))

    if not args.skip_graph:
        out = subprocess.run([sys.executable, __file__, "--graph-json", "--region", args.region, "--zoom", str(args.zoom)],
                             capture_output=True, text=True, check=True)
        g = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\ncurate build --region {args.region} --zoom {args.zoom}: the graph it submits (nothing fetched)")
        print(f"  tiles {g['tiles']:,}; metatiles {g['metatiles']:,} (up to {g['max_tiles_per_metatile']} tiles each); "
              f"search tasks {g['search_tasks']:,}; tasks {g['tasks']:,}")
        print(f"  task inputs pickled: {g['pickled'] / 2**20:,.1f} MiB ({g['pickled'] / g['metatiles']:,.0f} B per metatile task)")
        print(f"  driver peak RSS {g['peak_rss'] / 2**20:,.0f} MiB vs anchor (the interpreter with its imports) "
              f"{g['base_rss'] / 2**20:,.0f} MiB: ratio {_ratio(g['peak_rss'], g['base_rss'])}; "
              f"{(g['peak_rss'] - g['base_rss']) / g['tiles'] * 1e6 / 2**20:,.0f} MiB per million tiles")
        print(f"  planning {g['plan_s']:.1f}s, graph ready {g['seconds']:.1f}s")
        rows_gib = g["row_bytes"] * g["tiles"] / 2**30
        print(f"  manifest rows, were a driver to hold them all until the end: {g['row_bytes']:,.0f} B per row "
              f"(64,000 rows measured) -> {rows_gib:,.1f} GiB if every planned tile became a triplet; the build "
              "streams them from its done records instead (benchmarks/manifest_bench.py)")


if __name__ == "__main__":
    main()
