"""Server throughput, side by side in one run: `curate serve` vs nginx vs a plain FastAPI app.

    python benchmarks/serve_bench.py [--data OUT --release NAME] [--seconds 10] [--connections 64]

Single tiles: wrk (pinned to core 0, 64 connections, one thread) against each server pinned to
core 1, serving the same PNG files: nginx (one worker, sendfile, access log off), a plain
FastAPI app returning `FileResponse` (uvicorn with httptools + uvloop, access log off, like
ours) and `curate serve` (one worker). Goal: >= 10% of nginx's requests/s, p99 < 50 ms, no 5xx.

Shards: one WebDataset shard of every triplet streamed by `curate serve` (chunked; every tile
file opened, read and hash-checked on each request) vs nginx sending the same bytes, saved as one
file, with sendfile (Content-Length; its usual static-file set-up). Both servers on core 1, curl on
core 0; each round is one curl process fetching the URL --shard-requests times over one keep-alive
connection (MB/s from curl's own transfer times, so process start-up is not counted), rounds
alternate between the servers so that background load hits both alike, and both sides report the
median of --repeats rounds. Beside MB/s, each server's CPU time per MB (user + system, summed over
its process group, from /proc): on a busy machine wall-clock rates swing with other load, CPU per
MB much less. nginx with sendfile off (a read and a write copy per byte, as ours) is printed for
context. Goal: >= 70% of nginx, and >= 5x what a loader decodes (the anchor: this machine's PNG
decode rate on one core, in triplets/s).

`--baseline DIR` adds another checkout's `curate serve` (its own code) to the shard rounds, for a
before/after in one run. Without --data a release of synthetic triplets is written to a temporary
directory.
Needs Debian `nginx-light`, `wrk` and `curl`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scale_alibi.contract.release import HIRES_NAMES, Release  # noqa: E402
from scale_alibi.serve.process import ServerProcess, free_port  # noqa: E402

SERVER_CORE, CLIENT_CORE = "1", "0"


def plain_app():
    """The anchor a plain FastAPI app gives: one route, `FileResponse` from the release directory."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse

    root = Path(os.environ["PLAIN_DATA"])
    app = FastAPI()

    @app.get("/tiles/{release}/{layer}/{z}/{x}/{y}.png")
    async def tile(release: str, layer: str, z: int, x: int, y: int) -> FileResponse:
        return FileResponse(root / release / layer / str(z) / str(x) / f"{y}.png", media_type="image/png")

    return app


def make_tiny_release(root: Path, name: str = "tiny") -> str:
    """One triplet of flat 256 px PNGs (~0.3 kB): per-request overhead, not bandwidth. Returns a tile path."""
    import io

    import pyarrow as pa
    from PIL import Image

    from scale_alibi.contract.release import content_hash, write_manifest

    rel = Release(root, name)
    z, x, y = 14, 100, 100
    hashes = {}
    for i, (member, path) in enumerate(rel.triplet_paths(z, x, y).items()):
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (40 * i, 90, 200 - 20 * i)).save(buf, format="PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        hashes[member] = content_hash(buf.getvalue())
    table = pa.Table.from_pylist([{"z": z, "x": x, "y": y, "split": "train", "hash_s1": hashes["s1"],
                                   "hash_s2": hashes["s2"], "hash_naip": hashes["naip"],
                                   "hash_naip_hires": [hashes[n] for n in HIRES_NAMES]}])
    table = table.cast(pa.schema([("z", pa.int32()), ("x", pa.int64()), ("y", pa.int64()), ("split", pa.string()),
                                  ("hash_s1", pa.string()), ("hash_s2", pa.string()), ("hash_naip", pa.string()),
                                  ("hash_naip_hires", pa.list_(pa.string()))]))
    write_manifest(table, rel.manifest_path, {"release": name})
    return f"/tiles/{name}/s2/{z}/{x}/{y}.png"


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class _Subprocess:
    """A server process on loopback port `self.port`, in its own session so stop() ends all of it."""

    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


class Nginx(_Subprocess):
    """nginx with one worker on core `core` (None: any), serving `root` as static files (with
    `sendfile`, or reading into its buffers and writing them when `sendfile` is False)."""

    def __init__(self, root: Path, work: Path, core: str | None = SERVER_CORE, sendfile: bool = True):
        self.port = free_port()
        self.work = work
        conf = work / f"nginx-{self.port}.conf"
        conf.write_text(textwrap.dedent(f"""
            user root;
            worker_processes 1;
            daemon off;
            pid {work}/nginx-{self.port}.pid;
            error_log {work}/error-{self.port}.log warn;
            events {{ worker_connections 4096; }}
            http {{
                types {{ image/png png; application/x-tar tar; }}
                access_log off;
                sendfile {"on" if sendfile else "off"}; output_buffers 2 1m; tcp_nopush on; tcp_nodelay on;
                keepalive_requests 10000000; keepalive_timeout 120s;
                client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
                fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
                server {{ listen 127.0.0.1:{self.port}; root {root}; location /tiles/ {{ alias {root}/; }} }}
            }}
        """))
        pin = ["taskset", "-c", core] if core is not None else []
        self.proc = subprocess.Popen([*pin, "nginx", "-c", str(conf), "-p", str(work)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class PlainFastAPI(_Subprocess):
    """The plain FastAPI app under uvicorn (httptools, uvloop, no access log) on core SERVER_CORE."""

    def __init__(self, data: Path):
        self.port = free_port()
        env = {**os.environ, "PLAIN_DATA": str(data), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "uvicorn", "benchmarks.serve_bench:plain_app",
             "--factory", "--port", str(self.port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--log-level", "warning"], env=env, cwd=ROOT, start_new_session=True)


class CheckoutServer(_Subprocess):
    """`curate serve` (one worker, core SERVER_CORE) of another checkout of this project, `tree`:
    its own code (PYTHONPATH and working directory), not this one's."""

    def __init__(self, tree: Path, data: Path):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "scale_alibi", "serve", "--data", str(data),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and non-2xx/3xx count from one wrk run on CLIENT_CORE
    (of `url`, or of the paths a Lua `script` picks on that host)."""
    lua = ["-s", str(script)] if script else []
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "--timeout", "5s", *lua, url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": ms("50"),
        "p99": ms("99"),
        "non2xx": int(bad.group(1)) if bad else 0,
        "timeouts": int(errors.group(1)) if errors else 0,
    }


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group `pgid`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ..., utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stream_round(url: str, requests: int, pgid: int, size: int) -> tuple[float, float]:
    """One round: `requests` GETs of `url` by one curl on CLIENT_CORE over one keep-alive connection.
    (MB/s over curl's transfer times, server CPU microseconds per MB); each body must be `size` bytes."""
    cpu0 = group_cpu_s(pgid)
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, "curl", "-s", "-w", "%{size_download} %{time_total} %{http_code}\n",
                          *[arg for _ in range(requests) for arg in (url, "-o", "/dev/null")]],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    cpu = group_cpu_s(pgid) - cpu0
    transfers = [line.split() for line in out if line]
    assert len(transfers) == requests and all(t[0] == str(size) and t[2] == "200" for t in transfers), transfers
    mb = size * requests / 1e6
    return mb / sum(float(t[1]) for t in transfers), cpu / mb * 1e6


def decode_rate(release: Release, row: dict, seconds: float = 2.0) -> float:
    """Anchor: triplets/s one core decodes (seven PNGs each) with imagecodecs, as a loader does."""
    import imagecodecs

    blobs = [p.read_bytes() for p in release.triplet_paths(row["z"], row["x"], row["y"]).values()]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            imagecodecs.png_decode(b)
        n += 1
    return n / (time.perf_counter() - t0)


def check_cost_us_per_mb(body: bytes) -> dict[str, float]:
    """CPU microseconds per MB that each per-read integrity check costs over `body` (one core): the
    sha256 of a first read and the XXH3 of every later read (scale_alibi.serve.integrity)."""
    import hashlib

    from scale_alibi.serve.integrity import checksum

    members = [body[i : i + 131072] for i in range(0, len(body), 131072)]  # tile-sized pieces
    costs = {}
    for name, fn in (("sha256", lambda b: hashlib.sha256(b).digest()), ("xxh3", checksum)):
        t0 = time.process_time()
        for _ in range(3):
            for m in members:
                fn(m)
        costs[name] = (time.process_time() - t0) / 3 / (len(body) / 1e6) * 1e6
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="data directory with a finished release (default: synthetic)")
    ap.add_argument("--release", default="bench")
    ap.add_argument("--triplets", type=int, default=48, help="synthetic release size")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9, help="shard rounds per server (medians reported)")
    ap.add_argument("--shard-requests", type=int, default=8, help="shard GETs per round, one keep-alive connection")
    ap.add_argument("--skip-tiles", action="store_true", help="only the shard benchmark")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. a worktree of an older commit) whose "
                    "`curate serve` streams the same shard in the same rounds: before/after in one run")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "curl", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found; apt-get install -y nginx-light wrk curl util-linux")

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        if args.data is None:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from loader_bench import make_release  # the loader benchmark's synthetic imagery

            args.data = work / "data"
            print(f"writing {args.triplets} synthetic triplets ...", flush=True)
            make_release(args.data, args.triplets, args.release)
        release = Release(args.data, args.release)
        rows = release.read_manifest().to_pylist()
        row = rows[len(rows) // 2]
        tile = f"/tiles/{args.release}/s2/{row['z']}/{row['x']}/{row['y']}.png"
        tile_bytes = release.tile_path("s2", row["z"], row["x"], row["y"]).stat().st_size
        tiny = make_tiny_release(args.data) if not (args.data / "tiny").exists() else "/tiles/tiny/s2/14/100/100.png"
        tiny_bytes = (args.data / tiny.removeprefix("/tiles/")).stat().st_size
        cases = {f"{tile_bytes / 1e3:.0f} kB tile": tile, f"{tiny_bytes} B tile": tiny}
        print(f"wrk -t1 -c{args.connections} -d{args.seconds}s on core {CLIENT_CORE}, servers on core {SERVER_CORE}; "
              f"tiles: {cases}", flush=True)

        results = {}
        nginx = Nginx(args.data, work)
        nginx_copy = Nginx(args.data, work, sendfile=False)
        plain = PlainFastAPI(args.data)
        ours = ServerProcess(args.data, workers=1, command_prefix=["taskset", "-c", SERVER_CORE])
        baseline = CheckoutServer(args.baseline.resolve(), args.data) if args.baseline else None
        try:
            wait_http(nginx.url + tile)
            wait_http(plain.url + tile)
            ours.start()
            for case, path in ({} if args.skip_tiles else cases).items():
                for name, url in (("nginx", nginx.url), ("plain FastAPI FileResponse", plain.url), ("curate serve", ours.url)):
                    wrk(url + path, 2, args.connections)  # warm-up: page cache, our LRU
                    results[case, name] = wrk(url + path, args.seconds, args.connections)

            # Shards: one shard of every triplet, streamed vs the same bytes as one static file.
            shard = f"/shards/{args.release}/0.tar?shard_size={len(rows)}&split=all&seed=1"
            static = args.data / "shard.tar"
            subprocess.run(["curl", "-s", "-o", str(static), ours.url + shard], check=True)
            size = static.stat().st_size
            assert ours.proc is not None
            sides = {"curate serve": (ours.url + shard, ours.proc.pid),
                     "nginx": (nginx.url + "/shard.tar", nginx.proc.pid),
                     "nginx, sendfile off": (nginx_copy.url + "/shard.tar", nginx_copy.proc.pid)}
            if baseline is not None:
                wait_http(baseline.url + "/health")
                sides[f"baseline {args.baseline.name}"] = (baseline.url + shard, baseline.proc.pid)
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            for url, pgid in sides.values():  # warm-up: page cache, verdicts, connections
                stream_round(url, 1, pgid, size)
            for _ in range(args.repeats):  # interleaved, so background load hits all alike
                for name, (url, pgid) in sides.items():
                    rounds[name].append(stream_round(url, args.shard_requests, pgid, size))
        finally:
            for s in (ours, plain, nginx, nginx_copy, baseline):
                if s is not None:
                    s.stop()

        for case in ({} if args.skip_tiles else cases):
            print(f"\nsingle tiles, {case} (requests/s, latency)")
            anchor = results[case, "nginx"]["rps"]
            for name in ("nginx", "plain FastAPI FileResponse", "curate serve"):
                r = results[case, name]
                print(f"  {name:28s} {r['rps']:10,.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  "
                      f"non-2xx {r['non2xx']}  timeouts {r['timeouts']}  ({r['rps'] / anchor:6.1%} of nginx)")
            ours_r, plain_r = results[case, "curate serve"], results[case, "plain FastAPI FileResponse"]
            print(f"  project {ours_r['rps']:,.0f} req/s vs anchor nginx {anchor:,.0f}: ratio {ours_r['rps'] / anchor:.1%} "
                  f"(goal >= 10%); {ours_r['rps'] / plain_r['rps']:.1f}x the plain FastAPI app; "
                  f"p99 {ours_r['p99']:.1f} ms (goal < 50)")

        per_triplet = size / len(rows)
        loader = decode_rate(release, row)
        mbps = {name: statistics.median(r[0] for r in rs) for name, rs in rounds.items()}
        cpu = {name: statistics.median(r[1] for r in rs) for name, rs in rounds.items()}
        ours_mbps, nginx_mbps = mbps["curate serve"], mbps["nginx"]
        served = ours_mbps * 1e6 / per_triplet
        print(f"\nshards ({len(rows)} triplets, {size / 1e6:.1f} MB; medians of {args.repeats} rounds of "
              f"{args.shard_requests} GETs on one connection)")
        for name in sides:
            low, high = min(r[0] for r in rounds[name]), max(r[0] for r in rounds[name])
            print(f"  {name:20s} {mbps[name]:8.1f} MB/s (rounds {low:.0f}-{high:.0f})  server CPU {cpu[name]:5.0f} us/MB")
        print(f"  curate serve {ours_mbps:8.1f} MB/s vs anchor nginx (same bytes, one file, sendfile) {nginx_mbps:8.1f} MB/s: "
              f"ratio {ours_mbps / nginx_mbps:.1%} (goal >= 70%); server CPU per MB: nginx's is "
              f"{cpu['nginx'] / cpu['curate serve']:.1%} of ours")
        for name in sides:
            if name.startswith("baseline"):
                print(f"  vs {name}: {ours_mbps / mbps[name]:.2f}x its MB/s, {cpu['curate serve'] / cpu[name]:.2f}x its "
                      f"CPU per MB (its ratio to nginx {mbps[name] / nginx_mbps:.1%})")
        stream_us = cpu["curate serve"]  # server CPU microseconds per MB of the shard stream
        cost = check_cost_us_per_mb(static.read_bytes())
        print(f"  integrity check of every read: xxh3 {cost['xxh3']:.0f} us/MB = {cost['xxh3'] / stream_us:.1%} of the "
              f"server's {stream_us:.0f} CPU us/MB streamed (a sha256 of every read would cost {cost['sha256']:.0f} "
              f"us/MB = {cost['sha256'] / stream_us:.1%})")
        print(f"  = {served:,.0f} triplets/s served vs {loader:,.0f} triplets/s one core decodes "
              f"({len(HIRES_NAMES) + 3} PNGs each): {served / loader:.1f}x (goal >= 5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
